"""`r3mes`: one table of thin, typed commands over the library.

Each concern owns a Typer sub-app in its own module here; this file only mounts them.
Heavy imports (torch, uvicorn) happen inside commands, so `r3mes --help` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from r3mes import __version__
from r3mes.cli import backend, chain, chain_bft, model, nodes, serving, storage
from r3mes.cli.config import load_config
from r3mes.errors import R3mesError
from r3mes.paths import Home

app = typer.Typer(
    name="r3mes",
    help=(
        "R3MES: an open network for useful AI work. Miners fine-tune LoRA adapters on a "
        "frozen BitNet b1.58 model, validators verify, proposers merge, serving nodes chat.\n\n"
        "Start a whole local network with `r3mes up`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="R3MES_CONFIG",
            help="TOML file of option defaults, tables by command (e.g. [up] miners = 3). "
            "Default: $R3MES_HOME/config.toml when it exists. Flags and env vars win over it.",
        ),
    ] = None,
) -> None:
    """Load the config file (if any) as defaults for the command about to run."""
    path = config
    if path is None:
        default = Home.from_env(None, environ=os.environ).root / "config.toml"
        path = default if default.is_file() else None
    if path is not None:
        ctx.default_map = load_config(path, ctx.command)


app.add_typer(model.app, name="model")
app.add_typer(chain.wallet_app, name="wallet")
app.add_typer(chain.devnet_app, name="devnet")
app.add_typer(chain.tx_app, name="tx")
app.add_typer(chain.query_app, name="query")
app.add_typer(chain_bft.chain_app, name="chain")
app.add_typer(storage.storage_app, name="storage")
app.add_typer(storage.registry_app, name="registry")
app.add_typer(serving.app, name="serving")
app.add_typer(backend.app, name="backend")
nodes.register(app)


@app.command()
def version() -> None:
    """Print the R3MES version."""
    Console().print(f"r3mes {__version__}")


def main() -> None:
    """Entry point: run the CLI, turning R3MES errors into one clear line and exit code 1."""
    try:
        app()
    except R3mesError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except OSError as exc:  # disk full, permission denied, port in use: the OS said why
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(str(exc.strerror or exc) + where)}", highlight=False
        )
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
