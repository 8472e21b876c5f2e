"""Accounts benchmark: API-key authentication + one hold and capture per request.

A real backend server (uvicorn, its own process, `create_app` plus one route that does what
paid chat does around a completion: authenticate the API key, hold the price in one write
transaction, capture it in a second) is driven over loopback by 32 concurrent clients for a
fixed time. The baseline is the bare database round trip of the same two transactions
(`credits.hold` then `credits.capture` through the backend's own engine, 32 concurrent
tasks, no HTTP and no auth), measured in the same run. Figures per database:

- ops_per_s: completed requests per second (ratio = HTTP / bare; goal >= 0.5);
- p50_ms / p99_ms: request latency (baseline: the bare transaction pair's latency).

SQLite always; PostgreSQL when R3MES_TEST_POSTGRES_URL or R3MES_DATABASE_URL is set (a fresh
database is created and dropped), with Redis as the API-key cache when R3MES_TEST_REDIS_URL
is set (as a scale-out deployment runs). The machine is shared by client and server.

Run: .venv/bin/python -m benchmarks.backend_accounts [--quick]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from r3mes.backend.api.deps import ChatPrincipalDep, RuntimeDep

CLIENTS = 32
PRICE = 3
NODE = "remes1benchnode"
JWT = "bench-jwt-secret-0123456789abcdef"
PEPPER = "bench-key-pepper-0123456789abcdef"
ADDRESS = "remes1qqqsyqcyq5rqwzqfpg9scrgwpugpzysn3v7clr"


def emit(figure: str, value: float, unit: str, *, baseline: float | None, goal: str = "") -> None:
    ratio = round(value / baseline, 4) if baseline else None
    line = {
        "figure": figure,
        "value": round(value, 3),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 3),
        "ratio": ratio,
        "goal": goal,
    }
    print(json.dumps(line), flush=True)


def settings_for(home: Path, database_url: str, redis_url: str = "") -> Any:
    from r3mes.backend.settings import BackendSettings

    return BackendSettings(
        home=home,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=f"r3mes-bench-{os.getpid()}:",
        follow_chain=False,
        jwt_secret=JWT,
        key_pepper=PEPPER,
        max_body_bytes=1 << 16,
    )


# -- the server (child process) -----------------------------------------------------------


def serve(home: Path, database_url: str, redis_url: str, port: int) -> None:
    import uvicorn
    from fastapi import APIRouter

    from r3mes.backend.app import create_app
    from r3mes.backend.services import credits

    app = create_app(settings_for(home, database_url, redis_url))
    bench = APIRouter()

    @bench.post("/bench/charge")
    async def charge(principal: ChatPrincipalDep, runtime: RuntimeDep) -> dict[str, int]:
        ref = uuid.uuid4().hex
        async with runtime.db.write() as s, s.begin():
            held = await credits.hold(
                s,
                account_id=principal.account_id,
                amount=PRICE,
                idempotency_key=f"h-{ref}",
                ttl_s=60,
            )
        async with runtime.db.write() as s, s.begin():
            done = await credits.capture(
                s, hold_id=held.id, amount=PRICE, idempotency_key=f"c-{ref}", node=NODE
            )
        return {"hold": held.id, "captured": done.amount}

    app.include_router(bench)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- setup and the two measurements -------------------------------------------------------


async def prepare(settings: Any) -> tuple[int, str]:
    """Migrate, fund one account generously, make it an API key; (account id, key)."""
    from r3mes.backend.db.engine import Database
    from r3mes.backend.db.migrate import migrate
    from r3mes.backend.services import credits, keys

    db = Database(settings)
    try:
        await migrate(db)
        async with db.write() as s, s.begin():
            account = await credits.ensure_account(s, address=ADDRESS)
            await credits.deposit(s, account_id=account, amount=10**12, idempotency_key="fund")
            _, key = await keys.create_key(
                s,
                pepper=PEPPER.encode(),
                account_id=account,
                name="bench",
                scopes=["chat", "read"],
                expires_at=None,
                max_keys=10,
            )
        return account, key
    finally:
        await db.dispose()


async def drive(work: Callable[[], Awaitable[None]], seconds: float) -> list[float]:
    """CLIENTS workers call `work` until `seconds` pass; latencies of completed calls (s)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await work()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return latencies


async def bare(settings: Any, account: int, seconds: float) -> list[float]:
    from r3mes.backend.db.engine import Database
    from r3mes.backend.services import credits

    db = Database(settings)

    async def pair() -> None:
        ref = uuid.uuid4().hex
        async with db.write() as s, s.begin():
            held = await credits.hold(
                s, account_id=account, amount=PRICE, idempotency_key=f"h-{ref}", ttl_s=60
            )
        async with db.write() as s, s.begin():
            await credits.capture(
                s, hold_id=held.id, amount=PRICE, idempotency_key=f"c-{ref}", node=NODE
            )

    try:
        await drive(pair, 1.0)  # warm the pool
        return await drive(pair, seconds)
    finally:
        await db.dispose()


async def over_http(url: str, key: str, seconds: float) -> list[float]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        headers = {"Authorization": f"Bearer {key}"}

        async def request() -> None:
            response = await client.post("/bench/charge", headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"bench request failed: {response.status_code} {response.text}")

        await drive(request, 1.0)
        return await drive(request, seconds)


def start_server(
    home: Path, database_url: str, redis_url: str
) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "benchmarks.backend_accounts", "--serve", str(port)]
    command += ["--home", str(home), "--database-url", database_url, "--redis-url", redis_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3MES_")}
    proc = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"benchmark server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("benchmark server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(name: str, database_url: str, seconds: float, redis_url: str = "") -> None:
    with tempfile.TemporaryDirectory(prefix="r3mes-bench-accounts-") as tmp:
        home = Path(tmp)
        settings = settings_for(home, database_url)
        account, key = asyncio.run(prepare(settings))
        base = asyncio.run(bare(settings, account, seconds))
        proc, url = start_server(home, database_url, redis_url)
        try:
            http = asyncio.run(over_http(url, key, seconds))
        finally:
            proc.terminate()
            proc.wait(15)
    emit(
        f"accounts_{name}_ops_per_s",
        len(http) / seconds,
        "ops/s",
        baseline=len(base) / seconds,
        goal=">= 0.5 of bare",
    )
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        emit(
            f"accounts_{name}_{label}_ms",
            1000 * percentile(http, q),
            "ms",
            baseline=1000 * percentile(base, q),
            goal="" if label == "p50" else "<= 100 ms",
        )


def postgres_database() -> tuple[str, Callable[[], None]] | None:
    admin = os.environ.get("R3MES_TEST_POSTGRES_URL") or os.environ.get("R3MES_DATABASE_URL")
    if not admin:
        return None
    import asyncpg  # type: ignore[import-untyped]

    name = f"r3mes_bench_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    return url, lambda: asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per measurement")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.home, args.database_url, args.redis_url, args.serve)
        return
    seconds = 5.0 if args.quick else 20.0
    measure("sqlite", "", seconds)
    found = postgres_database()
    if found is not None:
        url, drop = found
        try:
            # Scale-out runs PostgreSQL with Redis (the shared API-key cache) when one is set.
            redis_url = os.environ.get("R3MES_TEST_REDIS_URL", "")
            measure("postgresql_redis" if redis_url else "postgresql", url, seconds, redis_url)
        finally:
            drop()


if __name__ == "__main__":
    main()
