"""Explorer benchmark: query latency on a synthetic index, websocket fan-out on a live chain.

1. Scale. A synthetic index (full: 100,000 accounts, 1,000,000 submissions, 100,000
   blocks, plus txs, attestations, rewards and 300,000 chat requests over 30 days; --quick:
   a tenth) is bulk-loaded into SQLite and, when a PostgreSQL URL is given (--postgres or
   R3MES_TEST_POSTGRES_URL), into a fresh PostgreSQL database. Then each query the
   leaderboard, account and analytics routes run is timed uncached through the backend's
   own async engine, with varying arguments; the figure is its p99 (goal <= 50 ms). The
   baseline is the p99 of `SELECT 1` through the same engine (the floor of any query).
2. Fan-out. A devnet and a real backend process (`r3mes backend start`, indexer on); N
   websocket clients (full: 1,000; --quick: 300) on /ws/blocks over loopback. Each block
   message carries the time the indexer committed it; the figure is the p99 of receive time
   minus commit time over all clients and blocks (goal <= 200 ms), and the share of clients
   that got every block (goal 1.0). Then the same with ten stalled clients (they connect and
   never read): baseline is the figure without them (goal: ratio ~1, p99 still <= 200 ms).

Run: .venv/bin/python -m benchmarks.backend_explorer [--quick] [--only scale|fanout]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from r3mes.chain import bech32
from r3mes.chain.crypto import ADDRESS_PREFIX
from r3mes.runtime.net import free_port

GOAL_QUERY = "<= 50 ms"
GOAL_WS = "<= 200 ms"
ROUND_LENGTH = 10


def emit(
    figure: str, value: float, unit: str, *, baseline: float | None = None, goal: str = ""
) -> None:
    ratio = round(value / baseline, 4) if baseline else None
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 3),
                "unit": unit,
                "baseline": None if baseline is None else round(baseline, 3),
                "ratio": ratio,
                "goal": goal,
            }
        ),
        flush=True,
    )


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# -- 1. synthetic index ------------------------------------------------------------------


class Synthetic:
    """Rows of a synthetic index, deterministic from the seed."""

    def __init__(self, *, accounts: int, submissions: int, blocks: int, chats: int) -> None:
        rng = random.Random(7)
        self.rng = rng
        self.n_accounts, self.n_subs, self.n_blocks, self.n_chats = (
            accounts,
            submissions,
            blocks,
            chats,
        )
        self.addresses = [
            bech32.encode(ADDRESS_PREFIX, (i + 1).to_bytes(20, "big")) for i in range(accounts)
        ]
        self.miners = self.addresses[: max(10, accounts // 10)]
        self.validators = self.addresses[
            len(self.miners) : len(self.miners) + max(5, accounts // 100)
        ]
        now_ms = int(time.time() * 1000)
        self.block_ms = 6000
        self.first_ms = now_ms - blocks * self.block_ms
        self.rounds = blocks // ROUND_LENGTH

    def meta(self) -> tuple[Any, ...]:
        params = {
            "round_length": ROUND_LENGTH,
            "shards_per_round": 128,
            "pow_difficulty": 16,
            "serving_stale_after_ms": 120_000,
        }
        return (
            1,
            "r3mes-bench",
            "00" * 32,
            self.n_blocks,
            json.dumps(params),
            10**12,
            10**9,
            10**6,
            self.n_accounts + 1,
            "",
            "",
            "",
            self.first_ms + self.n_blocks * self.block_ms,
        )

    def accounts(self) -> list[tuple[Any, ...]]:
        rng = self.rng
        miners, validators = set(self.miners), set(self.validators)
        rows = []
        for i, a in enumerate(self.addresses):
            is_m, is_v = a in miners, a in validators
            subs = rng.randint(50, 150) if is_m else 0
            verified = int(subs * 0.9)
            att = rng.randint(500, 1500) if is_v else 0
            roles = "miner" if is_m else "validator" if is_v else ""
            rows.append(
                (
                    a,
                    i + 1,
                    rng.randint(0, 10**6),
                    rng.randint(0, 500),
                    "02" + "ab" * 32,
                    rng.randint(0, 2000) if (is_m or is_v) else 0,
                    verified * 100,
                    0,
                    roles,
                    is_m,
                    is_v,
                    rng.randint(1, self.n_blocks),
                    subs,
                    verified,
                    subs - verified,
                    att,
                    att,
                    int(att * 0.97),
                )
            )
        return rows

    def nodes(self) -> list[tuple[Any, ...]]:
        rows = [("miner", a, "", 100, 1, True, 0, 0, 0, 0) for a in self.miners]
        rows += [("validator", a, "http://v", 50, 1, True, 0, 0, 0, 0) for a in self.validators]
        return rows

    def blocks(self) -> list[tuple[Any, ...]]:
        out = []
        for h in range(1, self.n_blocks + 1):
            ms = self.first_ms + h * self.block_ms
            out.append(
                (
                    h,
                    f"{h:064x}",
                    dt.datetime.fromtimestamp(ms / 1000, dt.UTC),
                    ms,
                    "",
                    "00" * 32,
                    2,
                    (h - 1) // ROUND_LENGTH + 1,
                )
            )
        return out

    def txs(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        txs, addrs = [], []
        rng = self.rng
        for h in range(1, self.n_blocks + 1):
            ms = self.first_ms + h * self.block_ms
            for i in range(2):
                signer = rng.choice(self.addresses)
                txs.append(
                    (
                        h,
                        i,
                        f"{h:056x}{i:08x}".upper(),
                        signer,
                        1,
                        0,
                        "",
                        "TransferCredits",
                        "[]",
                        "",
                        "[]",
                        ms,
                    )
                )
                addrs.append((signer, h, i, "signer"))
        return txs, addrs

    def rounds_rows(self) -> list[tuple[Any, ...]]:
        per = self.n_subs // max(1, self.rounds)
        return [
            (
                r,
                (r - 1) * ROUND_LENGTH + 1,
                r * ROUND_LENGTH,
                "ab" * 32,
                "closed",
                "m",
                1,
                "c",
                "d",
                1,
                "c",
                0,
                "",
                0,
                per,
                int(per * 0.9),
                per - int(per * 0.9),
            )
            for r in range(1, self.rounds + 1)
        ]

    def submissions(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        rng = self.rng
        subs, atts = [], []
        per = self.n_subs // max(1, self.rounds)
        sid = 0
        for r in range(1, self.rounds + 1):
            for shard in range(per):
                sid += 1
                miner = rng.choice(self.miners)
                x = rng.random()
                status = "verified" if x < 0.9 else "rejected" if x < 0.98 else "pending"
                h = (r - 1) * ROUND_LENGTH + 1 + shard % ROUND_LENGTH
                subs.append((sid, r, shard, miner, "bafy", "cd" * 32, h, status, h + 1, "", 0))
                atts.append(
                    (
                        sid,
                        rng.choice(self.validators),
                        1,
                        "accept" if status != "rejected" else "reject",
                        10,
                        h + 1,
                        r,
                        status != "pending",
                    )
                )
        return subs, atts

    def rewards(self) -> list[tuple[Any, ...]]:
        rng = self.rng
        return [
            (
                i + 1,
                rng.randint(1, self.n_blocks),
                rng.choice(self.miners),
                "miner",
                100,
                10,
                rng.randint(1, self.rounds),
                i + 1,
            )
            for i in range(self.n_subs // 10)
        ]

    def daily(self) -> list[tuple[Any, ...]]:
        days: dict[dt.date, list[int]] = {}
        for h in range(1, self.n_blocks + 1):
            day = dt.datetime.fromtimestamp(
                (self.first_ms + h * self.block_ms) / 1000, dt.UTC
            ).date()
            row = days.setdefault(day, [0, 0, 0, 0, 0, 0, 0])
            row[0] += 1
            row[1] += 2
        per_block = self.n_subs / self.n_blocks
        return [
            (
                d,
                b,
                t,
                int(b * per_block),
                int(b * per_block * 0.9),
                int(b * per_block * 0.08),
                b * 90,
                b * 5,
            )
            for d, (b, t, *_rest) in sorted(days.items())
        ]

    def chats(self) -> list[tuple[Any, ...]]:
        rng = self.rng
        now = dt.datetime.now(dt.UTC)
        models = ("r3mes-adapter", "bitnet-b1.58-2B", "auto")
        users = max(100, self.n_accounts // 20)
        out = []
        for i in range(self.n_chats):
            at = now - dt.timedelta(seconds=rng.randint(0, 30 * 86400))
            out.append(
                (
                    i + 1,
                    uuid.UUID(int=rng.getrandbits(128)).hex,
                    rng.randint(1, users),
                    None,
                    rng.choice(models),
                    rng.choice(self.validators),
                    "ok",
                    rng.randint(10, 500),
                    rng.randint(10, 500),
                    rng.randint(1, 50),
                    at,
                    rng.randint(50, 3000),
                    None,
                )
            )
        return out


TABLES = {
    "ix_meta": "id chain_id genesis_hash height params supply minted burned next_account_number "
    "active_model active_dataset active_adapter last_block_time_ms",
    "ix_accounts": "address number balance sequence pubkey reputation earned slashed roles "
    "is_miner is_validator first_height submissions verified rejected attestations "
    "attest_settled attest_agreed",
    "ix_nodes": "role address endpoint stake registered_height active last_heartbeat_ms "
    "adapter_version capacity heartbeats",
    "ix_blocks": "height hash time time_ms proposer app_hash num_txs round",
    "ix_txs": "height index hash signer sequence code log msg_types msgs memo events time_ms",
    "ix_tx_addresses": "address height index role",
    "ix_rounds": "number open_height close_height seed status base_model_id base_model_version "
    "base_model_cid dataset_id dataset_version dataset_cid adapter_version adapter_cid "
    "proposed_version submissions verified rejected",
    "ix_submissions": "id round shard miner cid digest height status settled_height tx_hash "
    "merged_version",
    "ix_attestations": "submission_id validator seq verdict distance_ppm height round agreed",
    "ix_rewards": "id height address kind amount reputation round submission_id",
    "ix_daily": "day blocks txs submissions verified rejected rewards slashes",
    "chat_requests": "id request_id account_id key_id model node status prompt_tokens "
    "completion_tokens credits created_at latency_ms payout_id",
}


def table_rows(syn: Synthetic) -> dict[str, list[tuple[Any, ...]]]:
    txs, addrs = syn.txs()
    subs, atts = syn.submissions()
    return {
        "ix_meta": [syn.meta()],
        "ix_accounts": syn.accounts(),
        "ix_nodes": syn.nodes(),
        "ix_blocks": syn.blocks(),
        "ix_txs": txs,
        "ix_tx_addresses": addrs,
        "ix_rounds": syn.rounds_rows(),
        "ix_submissions": subs,
        "ix_attestations": atts,
        "ix_rewards": syn.rewards(),
        "ix_daily": syn.daily(),
        "chat_requests": syn.chats(),
    }


def load_sqlite(path: Path, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    db = sqlite3.connect(path)
    for table, data in rows.items():
        cols = TABLES[table].split()
        if table == "chat_requests":
            data = [
                r[:10] + (r[10].replace(tzinfo=None).isoformat(sep=" "),) + r[11:] for r in data
            ]
        if table == "ix_blocks":
            data = [r[:2] + (r[2].replace(tzinfo=None).isoformat(sep=" "),) + r[3:] for r in data]
        if table == "ix_daily":
            data = [(r[0].isoformat(),) + r[1:] for r in data]
        marks = ",".join("?" * len(cols))
        quoted = ",".join(f'"{c}"' for c in cols)
        db.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({marks})", data)
    db.commit()
    db.execute("ANALYZE")
    db.close()


async def load_postgres(url: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
    try:
        for table, data in rows.items():
            await conn.copy_records_to_table(table, records=data, columns=TABLES[table].split())
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def roll_chats(database_url: str, home: Path) -> tuple[int, float]:
    """Fold every chat row into the analytics rollup (what the chat-rollup worker does)."""
    from r3mes.backend.db.engine import Database
    from r3mes.backend.services.chat_rollup import roll_up
    from r3mes.backend.settings import BackendSettings

    db = Database(BackendSettings(home=home, database_url=database_url))
    total, t = 0, time.perf_counter()
    try:
        while True:
            async with db.write() as s, s.begin():
                n = await roll_up(s, upto_id=2**62)
            total += n
            if n == 0:
                return total, time.perf_counter() - t
    finally:
        await db.dispose()


async def time_queries(
    database_url: str, home: Path, syn: Synthetic, reps: int
) -> dict[str, float]:
    from r3mes.backend.db.engine import Database
    from r3mes.backend.services import explorer, leaderboard
    from r3mes.backend.settings import BackendSettings

    db = Database(BackendSettings(home=home, database_url=database_url))
    rng = random.Random(3)
    try:
        async with db.read() as s:
            first = await leaderboard.miners(s, limit=50, cursor=None, rounds=10)
            deep_cursor = first["next_cursor"]
            for _ in range(20):  # walk 20 pages down for a deep cursor
                page = await leaderboard.miners(s, limit=50, cursor=deep_cursor, rounds=10)
                deep_cursor = page["next_cursor"] or deep_cursor
        cases: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "select_1": lambda s: s.execute(__import__("sqlalchemy").text("SELECT 1")),
            "leaderboard_miners": lambda s: leaderboard.miners(s, limit=50, cursor=None, rounds=10),
            "leaderboard_miners_deep_page": lambda s: leaderboard.miners(
                s, limit=50, cursor=deep_cursor, rounds=10
            ),
            "leaderboard_validators": lambda s: leaderboard.validators(
                s, limit=50, cursor=None, rounds=10
            ),
            "account": lambda s: explorer.account(s, rng.choice(syn.addresses)),
            "account_txs": lambda s: explorer.account_txs(
                s, rng.choice(syn.addresses), limit=50, cursor=None
            ),
            "miner": lambda s: leaderboard.miner(s, rng.choice(syn.miners), rounds=10),
            "analytics_30d": lambda s: leaderboard.analytics(s, days=30),
            "network_stats": leaderboard.network_stats,
        }
        out: dict[str, float] = {}
        for name, run in cases.items():
            samples = []
            for _ in range(reps):
                async with db.read() as s:
                    t = time.perf_counter()
                    await run(s)
                    samples.append((time.perf_counter() - t) * 1000)
            warm = samples[2:]  # the first two warm the page cache and statements
            out[name] = p99(warm)
            out[name + ":p50"] = statistics.median(warm)
        return out
    finally:
        await db.dispose()


async def scale(quick: bool, postgres: str, databases: tuple[str, ...]) -> None:
    from r3mes.backend.db.engine import Database
    from r3mes.backend.db.migrate import migrate
    from r3mes.backend.settings import BackendSettings

    f = 10 if quick else 1
    syn = Synthetic(
        accounts=100_000 // f,
        submissions=1_000_000 // f,
        blocks=100_000 // f,
        chats=300_000 // (3 * f if quick else 1),
    )
    t = time.perf_counter()
    rows = table_rows(syn)
    print(
        json.dumps(
            {
                "note": f"synthetic rows built in {time.perf_counter() - t:.1f} s",
                "rows": {k: len(v) for k, v in rows.items()},
            }
        ),
        flush=True,
    )
    reps = 60 if quick else 200
    backends: list[tuple[str, str]] = [("sqlite", "")] if "sqlite" in databases else []
    if postgres and "postgresql" in databases:
        backends.append(("postgresql", postgres))
    for name, admin in backends:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            url, drop = ("", None)
            if name == "postgresql":
                url, drop = await _fresh_pg(admin)
            try:
                db = Database(BackendSettings(home=home, database_url=url))
                await migrate(db)
                await db.dispose()
                t = time.perf_counter()
                if name == "sqlite":
                    await asyncio.to_thread(load_sqlite, home / "backend" / "backend.db", rows)
                else:
                    await load_postgres(url, rows)
                print(
                    json.dumps({"note": f"{name}: loaded in {time.perf_counter() - t:.1f} s"}),
                    flush=True,
                )
                rolled, seconds = await roll_chats(url, home)
                assert rolled == len(rows["chat_requests"]), (rolled, len(rows["chat_requests"]))
                emit(f"{name}_chat_rollup_rate", rolled / seconds, "rows/s")
                result = await time_queries(url, home, syn, reps)
            finally:
                if drop is not None:
                    await drop()
        base, base50 = result.pop("select_1"), result.pop("select_1:p50")
        for query, value in result.items():
            if query.endswith(":p50"):
                emit(f"{name}_{query[:-4]}_p50", value, "ms", baseline=base50)
            else:
                emit(f"{name}_{query}_p99", value, "ms", baseline=base, goal=GOAL_QUERY)


async def _fresh_pg(admin: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    import asyncpg

    name = f"r3mes_bench_{uuid.uuid4().hex[:10]}"
    plain = admin.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain, timeout=10)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()

    async def drop() -> None:
        c = await asyncpg.connect(plain, timeout=10)
        await c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await c.close()

    return plain.rsplit("/", 1)[0] + f"/{name}", drop


# -- 2. websocket fan-out ----------------------------------------------------------------


class Collector:
    """What each websocket client received: per client, height -> latency (ms)."""

    def __init__(self) -> None:
        self.latency: list[dict[int, float]] = []
        self.connected = 0


class BlockReader(asyncio.Protocol):
    """A minimal websocket client (RFC 6455, no extensions) on asyncio's callback API.

    1,000 clients share one process with the measurement, so each must cost little: frames
    are parsed straight from `data_received`, with no task switch per message. Server frames
    are unmasked; the client's pong is masked with a zero key (the payload is unchanged).
    """

    def __init__(self, seen: dict[int, float], ready: asyncio.Future[None]) -> None:
        self.seen = seen
        self.ready = ready
        self.buf = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time() * 1000
        self.buf += data
        if not self.upgraded:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.ready.set_exception(ConnectionError(head[:80].decode(errors="replace")))
                return
            self.upgraded, self.buf = True, rest
            self.ready.set_result(None)
        while len(self.buf) >= 2:
            size, at = self.buf[1] & 0x7F, 2
            if size == 126:
                if len(self.buf) < 4:
                    return
                size, at = int.from_bytes(self.buf[2:4], "big"), 4
            elif size == 127:
                if len(self.buf) < 10:
                    return
                size, at = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < at + size:
                return
            opcode, payload = self.buf[0] & 0x0F, self.buf[at : at + size]
            self.buf = self.buf[at + size :]
            if opcode == 1:
                self.on_text(payload, now)

    def on_text(self, payload: bytes, now: float) -> None:
        doc = json.loads(payload)
        if doc.get("type") == "block":
            self.seen[int(doc["data"]["height"])] = now - float(doc["data"]["committed_at"])
        elif doc.get("type") == "ping" and self.transport is not None:
            pong = b'{"type":"pong"}'
            self.transport.write(bytes([0x81, 0x80 | len(pong)]) + b"\0\0\0\0" + pong)


async def ws_client(port: int, col: Collector) -> asyncio.Transport:
    seen: dict[int, float] = {}
    col.latency.append(seen)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: BlockReader(seen, ready), "127.0.0.1", port)
    transport.write(HANDSHAKE)
    await asyncio.wait_for(ready, 60)
    col.connected += 1
    return transport


HANDSHAKE = (
    b"GET /ws/blocks HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def stalled_client(port: int) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(HANDSHAKE)
    return sock


async def height_of(http: Any, base: str) -> int:
    try:
        return int((await http.get(f"{base}/api/network/stats", timeout=5)).json()["height"])
    except Exception:
        return 0


async def window(http: Any, base: str, blocks: int) -> tuple[int, int]:
    """Heights (first, last) of the next `blocks` blocks, waiting until they are indexed."""
    start = await height_of(http, base)
    while await height_of(http, base) < start + blocks + 1:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # let the last block reach every client
    return start + 1, start + blocks


def figures(col: Collector, first: int, last: int) -> tuple[float, float]:
    """(p99 latency ms over all clients and blocks, share of clients with every block)."""
    wanted = set(range(first, last + 1))
    samples = [ms for seen in col.latency for h, ms in seen.items() if h in wanted]
    complete = sum(1 for seen in col.latency if wanted <= set(seen))
    return p99(samples), complete / max(1, len(col.latency))


async def fanout(quick: bool) -> None:
    import httpx

    from r3mes.chain.devnet import devnet_genesis, init_devnet
    from r3mes.paths import Home

    clients = 1000
    blocks = 8 if quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        chain_home = Home(root=Path(tmp) / "chain")
        init_devnet(chain_home, devnet_genesis())
        chain_port, port = free_port(), free_port()
        chain = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "r3mes.chain.devnet",
                "--home",
                str(chain_home.root),
                "--port",
                str(chain_port),
                "--block-interval",
                "0.5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = {**os.environ, "R3MES_WS_MAX_PER_IP": "5000", "R3MES_WS_QUEUE_SIZE": "64"}
        backend = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("r3mes")),
                "backend",
                "start",
                "--home",
                str(Path(tmp) / "backend"),
                "--port",
                str(port),
                "--chain",
                f"http://127.0.0.1:{chain_port}",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        transports: list[asyncio.Transport] = []
        stalled: list[socket.socket] = []
        try:
            async with httpx.AsyncClient() as http:
                while await height_of(http, base) < 2:
                    await asyncio.sleep(0.3)
                small = Collector()
                transports += [await ws_client(port, small) for _ in range(10)]
                first, last = await window(http, base, max(4, blocks // 2))
                base_p99, _ = figures(small, first, last)
                col = Collector()
                for _ in range(clients // 50):
                    transports += await asyncio.gather(*(ws_client(port, col) for _ in range(50)))
                first, last = await window(http, base, blocks)
                p99_n, every_n = figures(col, first, last)
                emit(
                    f"ws_delivery_p99_{clients}_clients",
                    p99_n,
                    "ms",
                    baseline=base_p99,
                    goal=GOAL_WS,
                )
                emit(f"ws_every_block_share_{clients}_clients", every_n, "share", goal="1.0")
                stalled = [stalled_client(port) for _ in range(10)]
                first, last = await window(http, base, blocks)
                p99_s, every_s = figures(col, first, last)
                emit(
                    f"ws_delivery_p99_{clients}_clients_10_stalled",
                    p99_s,
                    "ms",
                    baseline=p99_n,
                    goal=GOAL_WS + ", ratio ~1",
                )
                emit(
                    f"ws_every_block_share_{clients}_clients_10_stalled",
                    every_s,
                    "share",
                    baseline=every_n,
                    goal="1.0",
                )
        finally:
            for transport in transports:
                transport.close()
            for sock in stalled:
                sock.close()
            for proc in (backend, chain):
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the index, fewer clients")
    parser.add_argument("--only", choices=("scale", "fanout"), default=None)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("R3MES_TEST_POSTGRES_URL", ""),
        help="PostgreSQL admin URL (a fresh database is made and dropped); empty: SQLite only",
    )
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="which of sqlite,postgresql to time"
    )
    args = parser.parse_args()
    if args.only in (None, "scale"):
        asyncio.run(scale(args.quick, args.postgres, tuple(args.databases.split(","))))
    if args.only in (None, "fanout"):
        asyncio.run(fanout(args.quick))


if __name__ == "__main__":
    main()
