"""`r3mes backend ...`: the product service (accounts, credits, paid chat, explorer, dashboard)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from r3mes.backend.settings import BackendSettings

app = typer.Typer(
    help="The backend: wallet login, API keys, credits, paid chat across serving nodes, "
    "the network explorer and the web dashboard. SQLite in $R3MES_HOME by default; "
    "PostgreSQL and Redis by URL.",
    no_args_is_help=True,
)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", envvar="R3MES_HOME", help="R3MES home folder (default ~/.r3mes)."),
]
DatabaseOpt = Annotated[
    str,
    typer.Option(
        "--database-url",
        envvar="R3MES_DATABASE_URL",
        help="postgresql://user:pass@host/db; empty: SQLite in $R3MES_HOME/backend.",
    ),
]
RedisOpt = Annotated[
    str,
    typer.Option(
        "--redis-url",
        envvar="R3MES_REDIS_URL",
        help="redis://host:6379/0 for shared rate limits and caches; empty: in-process.",
    ),
]


def build_settings(**values: Any) -> BackendSettings:
    """Settings from the flags given (None: fall back to env, then defaults)."""
    from pydantic import ValidationError

    from r3mes.backend.errors import ConfigError
    from r3mes.backend.settings import BackendSettings
    from r3mes.paths import Home

    given = {k: v for k, v in values.items() if v is not None}
    given["home"] = Home.from_env(given.get("home"), environ=os.environ).root
    try:
        return BackendSettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"backend setting {where}: {first['msg']}") from exc


@app.command("start")
def start(
    home: HomeOpt = None,
    database_url: DatabaseOpt = "",
    redis_url: RedisOpt = "",
    host: Annotated[str, typer.Option("--host", envvar="R3MES_BACKEND_HOST")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", envvar="R3MES_BACKEND_PORT", help="HTTP port.")
    ] = 8080,
    chain: Annotated[
        str,
        typer.Option("--chain", envvar="R3MES_CHAIN_RPC", help="The ledger's RPC URL."),
    ] = "http://127.0.0.1:26657",
    chain_id: Annotated[
        str, typer.Option("--chain-id", envvar="R3MES_CHAIN_ID", help="Expected chain id.")
    ] = "r3mes-devnet-1",
    admin: Annotated[
        list[str] | None,
        typer.Option(
            "--admin", help="Wallet address allowed on the admin routes (repeat; or R3MES_ADMINS)."
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin", help="Browser origin allowed to call the API (repeat; exact)."
        ),
    ] = None,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not apply migrations on start.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    name: Annotated[
        str,
        typer.Option(
            "--name", help="Instance name: its pid file is $R3MES_HOME/run/backend-NAME.pid."
        ),
    ] = "backend",
) -> None:
    """Run the backend HTTP service in the foreground (Ctrl-C or SIGTERM stops it cleanly)."""
    from r3mes.backend.app import create_app
    from r3mes.backend.server import serve

    settings = build_settings(
        home=home,
        database_url=database_url or None,
        redis_url=redis_url or None,
        host=host,
        port=port,
        chain_rpc=chain,
        chain_id=chain_id,
        admins=tuple(admin) if admin else None,
        cors_origins=tuple(cors_origin) if cors_origin else None,
        migrate_on_start=not no_migrate,
    )
    console = Console(stderr=True)
    backing = (
        f"database: {'SQLite' if settings.is_sqlite else 'PostgreSQL'}, "
        f"cache: {'Redis' if settings.redis_url else 'in-process'}"
    )
    from r3mes.runtime.pidfile import pid_path

    serve(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        pid_file=pid_path(settings.home / "run", "backend", name),
        name=name,
        on_listening=lambda url: console.print(
            f"r3mes backend on {url} ({backing}); dashboard at {url}/", highlight=False
        ),
    )


@app.command("migrate")
def migrate_cmd(home: HomeOpt = None, database_url: DatabaseOpt = "") -> None:
    """Apply the database migrations shipped with R3MES (idempotent)."""
    from r3mes.backend.db.engine import Database
    from r3mes.backend.db.migrate import migrate, pending_heads

    settings = build_settings(home=home, database_url=database_url or None)

    async def run() -> list[str]:
        db = Database(settings)
        try:
            await migrate(db)
            return await pending_heads(db)
        finally:
            await db.dispose()

    left = asyncio.run(run())
    if left:
        raise typer.Exit(1)
    Console().print(f"database is at the newest schema ({_describe(settings)})", highlight=False)


@app.command("create-admin")
def create_admin(
    address: Annotated[str, typer.Argument(help="Wallet address (remes1...) to make an admin.")],
    home: HomeOpt = None,
    database_url: DatabaseOpt = "",
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Take admin rights away instead.")
    ] = False,
) -> None:
    """Make a wallet address an admin (creating its account); audited. Applies migrations."""
    from r3mes.backend.db.engine import Database
    from r3mes.backend.db.migrate import migrate
    from r3mes.backend.services.credits import set_admin

    settings = build_settings(home=home, database_url=database_url or None)

    async def run() -> int:
        db = Database(settings)
        try:
            await migrate(db)
            async with db.write() as s, s.begin():
                return await set_admin(s, address=address, admin=not revoke, actor="cli")
        finally:
            await db.dispose()

    account_id = asyncio.run(run())
    state = "no longer an admin" if revoke else "an admin"
    Console().print(f"{address} (account {account_id}) is {state}", highlight=False)


@app.command("status")
def status(
    url: Annotated[
        str,
        typer.Option("--url", envvar="R3MES_BACKEND_URL", help="The backend's base URL."),
    ] = "http://127.0.0.1:8080",
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw health JSON.")] = False,
) -> None:
    """Ask a running backend for its health (database, Redis, ledger, serving nodes)."""
    import httpx

    from r3mes.backend.errors import Unavailable

    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=5.0)
    except httpx.HTTPError as exc:
        raise Unavailable(
            f"no backend answers at {url} ({exc}); start it: r3mes backend start"
        ) from exc
    try:
        body = response.json()
    except ValueError as exc:
        raise Unavailable(f"{url}/health did not answer JSON (is this an R3MES backend?)") from exc
    if as_json:
        Console().print_json(json.dumps(body))
    else:
        console = Console()
        console.print(f"backend {url}: {body.get('status', 'unknown')}", highlight=False)
        for name, check in sorted(body.get("checks", {}).items()):
            mark = "ok" if check.get("ok") else "FAIL"
            detail = check.get("error") or check.get("backend") or ""
            console.print(f"  {name:<12} {mark} {detail}", highlight=False)
    if response.status_code != 200:
        raise typer.Exit(1)


def _describe(settings: BackendSettings) -> str:
    if settings.is_sqlite:
        return f"SQLite at {settings.data_dir}"
    return "PostgreSQL"
