"""Gateway benchmark: what the paid chat path adds to one request, at 32 concurrent clients.

The upstream is a minimal OpenAI-compatible responder started here (its own process, a
fixed short reply with usage), so the figure is the gateway's own cost. The backend runs
as `r3mes backend start` (its own process) with that responder as its only serving node.
Every gateway request goes the full way: API key authentication, rate limits (key and IP
buckets, in process or Redis), the credit hold, forwarding, capture of the reported usage
and the `chat_requests` row.

Figures (each against calling the upstream directly with the same client, same run):
- closed loop: 32 clients, each sending its next request as soon as the last one answered.
  p50 and p99 latency overhead per request (gateway minus direct) and requests per second.
  This measures saturation: with every client always waiting, one gateway process that
  spends C ms of CPU per request answers in about 32 x C (Little's law), whatever the box.
- open loop (the goals, <= 3 ms p50 and <= 15 ms p99 on SQLite): 32 clients, each sending at
  a fixed pace, together `--open-fraction` (default 0.5) of the gateway's closed-loop
  throughput measured just before in the same run, so the load is one the gateway sustains
  on this machine. Each latency runs from the request's scheduled send time (a request sent
  late because its client was still waiting counts the wait). Direct and gateway run the same
  schedule, alternating in blocks (direct, gateway, direct, gateway) so a change in the
  machine's load hits both.
- the p50 overhead with one client (direct and gateway requests taking turns), and the
  backend process's CPU time per request.
Each figure carries the machine's load average (`loadavg`, 1 minute) when it was measured.
First on SQLite with in-process limits, then on PostgreSQL + Redis when
R3MES_TEST_POSTGRES_URL and R3MES_TEST_REDIS_URL are set (`eval "$(scripts/services.sh)"`).

Run: .venv/bin/python -m benchmarks.backend_gateway [--quick] [--open-fraction F | --open-rate R]
(`--quick`: 200 requests per closed-loop mode, the open loop at most 6 s per mode.)
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from r3mes.runtime.net import free_port

CLIENTS = 32
MODEL = "r3mes-adapter"
OPERATOR = "remes1benchoperator"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}

UPSTREAM = r"""
import json, sys, time
import uvicorn

REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "r3mes-adapter",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}).encode()
MODELS = json.dumps({"object": "list", "data": [
    {"id": "base", "object": "model"},
    {"id": "r3mes-adapter", "object": "model", "parent": "base"}]}).encode()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = MODELS if scope["path"] == "/v1/models" else REPLY
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            lifespan="off", access_log=False)
"""


def emit(
    figure: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    goal: str = "",
    **extra: object,
) -> None:
    ratio = round(value / baseline, 4) if baseline else None
    doc = {
        "figure": figure,
        "value": round(value, 3),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 3),
        "ratio": ratio,
        "goal": goal,
        **extra,
    }
    print(json.dumps(doc), flush=True)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.1)


@contextmanager
def process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def create_keys(home: Path, database_url: str, count: int) -> list[str]:
    """`count` accounts with ample credits and a chat key each, in the backend's database
    (one per client: clients are different users, as in production)."""
    from r3mes.backend.db.engine import Database
    from r3mes.backend.services import credits, keys
    from r3mes.backend.settings import BackendSettings
    from r3mes.chain.crypto import SigningKey

    settings = BackendSettings(
        home=home, database_url=database_url, key_pepper="bench-pepper-0123456789abcdef"
    )
    db = Database(settings)
    found = []
    try:
        for _ in range(count):
            async with db.write() as s, s.begin():
                account = await credits.ensure_account(s, address=SigningKey.generate().address)
                await credits.deposit(s, account_id=account, amount=10**15, idempotency_key="bench")
                _, key = await keys.create_key(
                    s,
                    pepper=settings.key_pepper.encode(),
                    account_id=account,
                    name="bench",
                    scopes=["chat"],
                    expires_at=None,
                    max_keys=10,
                )
            found.append(key)
        return found
    finally:
        await db.dispose()


async def load(
    url: str, keys: list[str], total: int, *, clients: int = CLIENTS
) -> tuple[list[float], float]:
    """`total` requests from CLIENTS concurrent clients (client i uses keys[i] when given);
    (latencies in s, wall seconds)."""
    latencies: list[float] = []
    left = total
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    payload = json.dumps(BODY).encode()
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(i: int) -> None:
            nonlocal left
            headers = {"content-type": "application/json"}
            if keys:
                headers["authorization"] = f"Bearer {keys[i]}"
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                r = await client.post(url, content=payload, headers=headers)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        return latencies, time.perf_counter() - start


async def paced(url: str, keys: list[str], total: int, rate: float) -> tuple[list[float], float]:
    """`total` requests from CLIENTS clients at `rate` req/s together (open loop): client i
    sends its k-th request at (i + k * CLIENTS) / rate s after the start, or as soon as its
    previous one answered if that is later. (latencies from the scheduled times in s, wall s)."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    payload = json.dumps(BODY).encode()
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(i: int, start: float) -> None:
            headers = _auth(keys, i)
            for k in range(i, total, CLIENTS):
                due = start + k / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                r = await client.post(url, content=payload, headers=headers)
                latencies.append(time.perf_counter() - due)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")

        # every client's connection is open before the clock starts
        warm = [client.post(url, content=payload, headers=_auth(keys, i)) for i in range(CLIENTS)]
        await asyncio.gather(*warm)
        start = time.perf_counter() + 0.05
        await asyncio.gather(*(worker(i, start) for i in range(CLIENTS)))
        return latencies, time.perf_counter() - start


async def one_at_a_time(
    direct: str, gateway: str, key: str, total: int
) -> tuple[list[float], list[float]]:
    """`total` requests to each, one at a time, alternating; (direct, gateway) latencies in s."""
    payload = json.dumps(BODY).encode()
    found: tuple[list[float], list[float]] = ([], [])
    async with httpx.AsyncClient(timeout=30) as client:
        targets = ((direct, _auth([], 0)), (gateway, _auth([key], 0)))
        for i in range(total * 2 + 2):
            url, headers = targets[i % 2]
            t0 = time.perf_counter()
            r = await client.post(url, content=payload, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
            if i >= 2:  # the first of each opens its connection
                found[i % 2].append(time.perf_counter() - t0)
    return found


def _auth(keys: list[str], i: int) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if keys:
        headers["authorization"] = f"Bearer {keys[i]}"
    return headers


def loadavg() -> float | None:
    """The machine's 1-minute load average (Linux; None elsewhere)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def run_case(
    label: str,
    *,
    requests: int,
    database_url: str,
    redis_url: str,
    goals: bool,
    open_fraction: float,
    open_seconds: float,
    open_rate: float | None,
) -> None:
    upstream_port, backend_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="r3mes-bench-gw-") as tmp:
        home = Path(tmp)
        env = {
            **os.environ,
            "R3MES_HOME": str(home),
            "R3MES_DATABASE_URL": database_url,
            "R3MES_REDIS_URL": redis_url,
            "R3MES_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:",
            "R3MES_FOLLOW_CHAIN": "false",
            "R3MES_KEY_PEPPER": "bench-pepper-0123456789abcdef",
            "R3MES_JWT_SECRET": "bench-jwt-secret-0123456789abcdef",
            "R3MES_SERVING_ENDPOINTS": f"{OPERATOR}=http://127.0.0.1:{upstream_port}",
            "R3MES_NODE_CAPACITY_DEFAULT": "64",
            "R3MES_RATE_TIERS": json.dumps(
                {"default": {"requests_per_min": 10**8, "tokens_per_min": 10**11}}
            ),
            "R3MES_IP_RATE": json.dumps({"requests_per_min": 10**8, "tokens_per_min": 10**11}),
        }
        upstream_cmd = [sys.executable, "-c", UPSTREAM, str(upstream_port)]
        backend_cmd = [sys.executable, "-m", "r3mes.cli.main", "backend", "start"]
        backend_cmd += ["--port", str(backend_port), "--log-level", "warning"]
        p50_goal, p99_goal = ("<= 3 ms", "<= 15 ms") if goals else ("", "")
        with process(upstream_cmd) as up, process(backend_cmd, env) as backend:
            direct = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
            gateway = f"http://127.0.0.1:{backend_port}/v1/chat/completions"
            wait_http(f"http://127.0.0.1:{upstream_port}/v1/models", up)
            wait_http(f"http://127.0.0.1:{backend_port}/v1/pricing", backend)
            keys = asyncio.run(create_keys(home, database_url, CLIENTS))
            wait_routable(backend_port, {"authorization": f"Bearer {keys[0]}"})
            warm = max(50, requests // 10)
            asyncio.run(load(direct, [], warm))
            asyncio.run(load(gateway, keys, warm))

            # closed loop: saturation
            load0 = loadavg()
            base, base_wall = asyncio.run(load(direct, [], requests))
            cpu0 = cpu_seconds(backend.pid)
            via, via_wall = asyncio.run(load(gateway, keys, requests))
            cpu1 = cpu_seconds(backend.pid)
            closed_rps = requests / via_wall
            closed = {"loop": "closed", "clients": CLIENTS, "loadavg": load0}
            d50, d99 = pct(base, 0.5) * 1000, pct(base, 0.99) * 1000
            g50, g99 = pct(via, 0.5) * 1000, pct(via, 0.99) * 1000
            emit(
                f"gateway p50 overhead, closed loop ({label})",
                g50 - d50,
                "ms",
                baseline=d50,
                **closed,
            )
            emit(
                f"gateway p99 overhead, closed loop ({label})",
                g99 - d99,
                "ms",
                baseline=d99,
                **closed,
            )
            emit(f"gateway p50 latency, closed loop ({label})", g50, "ms", baseline=d50, **closed)
            emit(
                f"gateway mean latency, closed loop ({label})",
                statistics.fmean(via) * 1000,
                "ms",
                baseline=statistics.fmean(base) * 1000,
                **closed,
            )
            emit(
                f"gateway requests/s, closed loop ({label})",
                closed_rps,
                "req/s",
                baseline=requests / base_wall,
                goal="ratio: higher is better",
                **closed,
            )
            if cpu0 is not None and cpu1 is not None:
                # CPU the backend process spent per request (all its threads): what the
                # gateway costs, however busy the shared machine is
                emit(
                    f"backend CPU per gateway request ({label})",
                    (cpu1 - cpu0) * 1000 / requests,
                    "ms",
                    **closed,
                )

            # open loop at a rate the gateway sustains: the goals
            rate = open_rate if open_rate is not None else closed_rps * open_fraction
            load1 = loadavg()
            # `requests` per mode, or as many as `open_seconds` at this rate allows
            half = max(CLIENTS, min(requests, int(rate * open_seconds)) // 2)
            open_base: list[float] = []
            open_via: list[float] = []
            via_walls: list[float] = []
            for _ in range(2):
                lat, _ = asyncio.run(paced(direct, [], half, rate))
                open_base += lat
                lat, wall = asyncio.run(paced(gateway, keys, half, rate))
                open_via += lat
                via_walls.append(wall)
            achieved = 2 * half / sum(via_walls)
            opened = {
                "loop": "open",
                "clients": CLIENTS,
                "offered_rps": round(rate, 1),
                "achieved_rps": round(achieved, 1),
                "open_fraction": None if open_rate is not None else open_fraction,
                "requests": 2 * half,
                "loadavg": load1,
                "loadavg_end": loadavg(),
            }
            d50, d99 = pct(open_base, 0.5) * 1000, pct(open_base, 0.99) * 1000
            g50, g99 = pct(open_via, 0.5) * 1000, pct(open_via, 0.99) * 1000
            emit(
                f"gateway p50 overhead, open loop ({label})",
                g50 - d50,
                "ms",
                baseline=d50,
                goal=p50_goal,
                **opened,
            )
            emit(
                f"gateway p99 overhead, open loop ({label})",
                g99 - d99,
                "ms",
                baseline=d99,
                goal=p99_goal,
                **opened,
            )
            emit(f"gateway p50 latency, open loop ({label})", g50, "ms", baseline=d50, **opened)
            emit(f"gateway p99 latency, open loop ({label})", g99, "ms", baseline=d99, **opened)

            # one request at a time, direct and gateway taking turns (a change in the
            # machine's load hits both): the gateway's own cost without queueing
            one = max(100, requests // 10)
            load2 = loadavg()
            base1, via1 = asyncio.run(one_at_a_time(direct, gateway, keys[0], one))
    o50 = (pct(via1, 0.5) - pct(base1, 0.5)) * 1000
    emit(
        f"gateway p50 overhead, 1 client ({label})",
        o50,
        "ms",
        baseline=pct(base1, 0.5) * 1000,
        loop="closed",
        clients=1,
        loadavg=load2,
    )


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_routable(port: int, auth: dict[str, str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=auth, timeout=5)
        if models.status_code == 200 and any(m["id"] == MODEL for m in models.json()["data"]):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway never saw the upstream")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (under a minute)")
    parser.add_argument(
        "--open-fraction",
        type=float,
        default=0.5,
        help="open-loop rate as a fraction of the closed-loop throughput (default 0.5)",
    )
    parser.add_argument(
        "--open-rate",
        type=float,
        default=None,
        help="open-loop rate in req/s instead of a fraction (the same load for two builds)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.open_fraction <= 1:
        parser.error("--open-fraction must be in (0, 1]")
    if args.open_rate is not None and not args.open_rate > 0:
        parser.error("--open-rate must be positive")
    requests = 200 if args.quick else 3000
    open_seconds = 6.0 if args.quick else 60.0
    print(json.dumps({"note": f"{CLIENTS} clients, {requests} requests per mode"}), flush=True)
    run_case(
        "SQLite, in-process limits",
        requests=requests,
        database_url="",
        redis_url="",
        goals=True,
        open_fraction=args.open_fraction,
        open_seconds=open_seconds,
        open_rate=args.open_rate,
    )
    pg, redis = os.environ.get("R3MES_TEST_POSTGRES_URL"), os.environ.get("R3MES_TEST_REDIS_URL")
    if pg and redis:
        with fresh_postgres(pg) as url:
            run_case(
                "PostgreSQL + Redis",
                requests=requests,
                database_url=url,
                redis_url=redis,
                goals=False,
                open_fraction=args.open_fraction,
                open_seconds=open_seconds,
                open_rate=args.open_rate,
            )
    else:
        print(json.dumps({"note": "PostgreSQL + Redis skipped: run scripts/services.sh"}))


@contextmanager
def fresh_postgres(admin_url: str) -> Iterator[str]:
    import asyncpg

    name = f"r3mes_bench_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
