"""Server secrets (JWT key, API-key pepper): from settings, or generated once into a 0600 file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from r3mes.backend.errors import ConfigError

SECRET_BYTES = 32


def load_or_create_secret(path: Path, configured: str = "") -> bytes:
    """`configured` wins; else read `path`; else create it (mode 0600) with fresh random bytes.

    Creation is atomic and race-free (write a temporary file, then hard-link it into place):
    processes starting together end up with the same, complete secret.
    """
    if configured:
        if len(configured) < 16:
            raise ConfigError("configured backend secrets must be at least 16 characters")
        return configured.encode()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        return _read(path)
    # Written whole to a private temporary file, then linked into place: `link` fails if the
    # name exists, so the first process wins and no one ever reads a half-written file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(SECRET_BYTES))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read backend secret {path}: {exc.strerror or exc}") from exc
    if len(text) < 32:
        raise ConfigError(f"backend secret {path} is too short; delete it to generate a new one")
    mode = path.stat().st_mode & 0o077
    if mode:
        raise ConfigError(f"backend secret {path} is readable by others; run: chmod 600 {path}")
    return text.encode()
