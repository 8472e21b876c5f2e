"""`r3mes up | down | miner | validator | proposer | serving-node`: the network's roles.

Every role has `start` (runs in the foreground until SIGTERM/Ctrl-C), `stop` and `status`
(both work from another shell through the pid files under `$R3MES_HOME/run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from r3mes.paths import Home

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="R3MES home folder (default: $R3MES_HOME or ~/.r3mes)."),
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Instance name; all instances when omitted.")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for a clean stop before SIGKILL.")
]

ROLE_HELP = {
    "miner": "Miner: trains LoRA updates on its shard, stores them and submits them.",
    "validator": "Validator: re-executes submitted work and sends signed attestations.",
    "proposer": "Proposer: merges a round's verified updates into the next adapter version.",
    "serving": "Serving node: serves chat with the base model and approved adapters.",
}


def _home(home: Path | None) -> Home:
    from r3mes.paths import Home

    return Home.from_env(home)


def _stop(role: str | None, name: str | None, home: Path | None, timeout: float) -> None:
    from r3mes.node.control import stop_services

    console = Console()
    for service_id, outcome in stop_services(_home(home), role=role, name=name, timeout=timeout):
        style = {"stopped": "green", "killed": "yellow", "stale": "dim"}.get(outcome, "white")
        console.print(f"{service_id}: [{style}]{outcome}[/]")


def _status(role: str | None, home: Path | None) -> None:
    from r3mes.node.control import service_statuses

    statuses = service_statuses(_home(home), role=role)
    console = Console()
    if not statuses:
        console.print(f"no {role or 'service'} is running")
        return
    table = Table("service", "pid", "state", "url", "uptime")
    for status in statuses:
        info = status.info
        if info is None:
            table.add_row(status.service_id, "?", "[red]malformed pid file[/]", "", "")
            continue
        state = "[green]running[/]" if status.alive else "[dim]stale pid file[/]"
        if status.alive and status.health is None:
            state = "[yellow]not answering[/]"
        uptime = f"{status.health['uptime_s']:.0f}s" if status.health else ""
        table.add_row(status.service_id, str(info.pid), state, info.url, uptime)
    console.print(table)


def _role_app(role: str) -> typer.Typer:
    app = typer.Typer(help=ROLE_HELP[role], no_args_is_help=True)

    @app.command("stop")
    def stop(name: NameOpt = None, home: HomeOpt = None, timeout: TimeoutOpt = 60.0) -> None:
        """Stop running instances (SIGTERM; in-flight work finishes or rolls back)."""
        _stop(role, name, home, timeout)

    @app.command("status")
    def status(home: HomeOpt = None) -> None:
        """Show running instances, their pids, HTTP URLs and health."""
        _status(role, home)

    return app


miner_app = _role_app("miner")
validator_app = _role_app("validator")
proposer_app = _role_app("proposer")
serving_node_app = _role_app("serving")


def down(home: HomeOpt = None, timeout: TimeoutOpt = 60.0) -> None:
    """Stop a network started with `r3mes up` (or every role service under --home)."""
    from r3mes.node.errors import ServiceError
    from r3mes.node.pidfile import pid_path, read_pid_file, stop_service

    paths = _home(home)
    up_pid = pid_path(paths.run, "up", "network")
    console = Console()
    info = read_pid_file(up_pid)
    if info is not None and info.alive():
        console.print(f"network (pid {info.pid}): {stop_service(up_pid, timeout=timeout)}")
        return
    try:
        _stop(None, None, home, timeout)
    except ServiceError:
        console.print("nothing is running")


def register(app: typer.Typer) -> None:
    """Mount the role commands on the root app."""
    app.add_typer(miner_app, name="miner")
    app.add_typer(validator_app, name="validator")
    app.add_typer(proposer_app, name="proposer")
    app.add_typer(serving_node_app, name="serving-node")
    app.command("down")(down)
