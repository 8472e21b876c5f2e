"""The CLI's config file: defaults for any command's options, from TOML.

Precedence, highest first: command-line flag, environment variable, config file, built-in
default. The file is `--config FILE`, else `$R3MES_CONFIG`, else `$R3MES_HOME/config.toml`
when it exists. Tables follow the command path and keys are option names::

    [up]
    miners = 3
    round-blocks = 10

    [miner.start]
    chain = "http://127.0.0.1:26657"

Unknown commands or options are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from r3mes.errors import R3mesError

MAX_CONFIG_BYTES = 1 << 20


class ConfigError(R3mesError):
    """The config file cannot be read or names something that does not exist."""


def load_config(path: Path, root: Any) -> dict[str, Any]:
    """Parse `path` and return it as a click `default_map` for `root`, validated."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return _to_default_map(doc, root, path, ())


def _to_default_map(
    table: dict[str, Any], command: Any, path: Path, where: tuple[str, ...]
) -> dict[str, Any]:
    """`command` is the (Typer-vendored) click command; read duck-typed."""
    out: dict[str, Any] = {}
    params = {p.name: p for p in command.params if p.name and p.param_type_name == "option"}
    subcommands: dict[str, Any] = getattr(command, "commands", {})
    for key, value in table.items():
        name = key.replace("-", "_")
        here = " ".join((*where, key))
        if key in subcommands:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{here}] must be a table of option values")
            out[key] = _to_default_map(value, subcommands[key], path, (*where, key))
        elif name in params:
            if isinstance(value, dict):
                raise ConfigError(f"{path}: option {here!r} takes a value, not a table")
            out[name] = value
        else:
            known = sorted([*subcommands, *(n.replace("_", "-") for n in params)])
            raise ConfigError(
                f"{path}: unknown command or option {here!r}; "
                f"known here: {', '.join(known) or 'none'}"
            )
    return out
