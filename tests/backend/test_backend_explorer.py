"""Explorer REST over a small synthetic index (SQLite and PostgreSQL): cursor pages walk
every row once in order, ETags and 304s, a new block invalidates the cache, clear errors,
and analytics from the chat rollup (exact distinct users, unsettled ids left for later)."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update
from support.backend import make_settings, running

from r3mes.backend.app import create_app
from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.db.index import IxMeta, IxNode, IxTxAddress
from r3mes.backend.services.cache import ExplorerCache
from r3mes.backend.services.chat_rollup import ChatRoller
from r3mes.backend.services.live import explorer_service

sys.path.insert(0, str(Path(__file__).parents[2]))
from benchmarks.backend_explorer import TABLES, Synthetic, table_rows  # noqa: E402

pytestmark = pytest.mark.anyio


async def load(db: Database, syn: Synthetic) -> None:
    rows = table_rows(syn)
    rows.pop("chat_requests")
    async with db.write() as s, s.begin():
        for table, data in rows.items():
            cols = TABLES[table].split()
            model = {m.__tablename__: m for m in _tables()}[table]
            await s.execute(insert(model), [dict(zip(cols, r, strict=True)) for r in data])


def _tables() -> list[Any]:
    from r3mes.backend.db.index import CHAT_TABLES, INDEX_TABLES

    return [*INDEX_TABLES, *CHAT_TABLES]


@pytest.fixture
async def explorer(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, Synthetic]]:
    app = create_app(make_settings(tmp_path, database_url=database_url), start_workers=False)
    async with running(app) as client:
        runtime = app.state.runtime
        syn = Synthetic(accounts=120, submissions=600, blocks=60, chats=0)
        await load(runtime.db, syn)
        yield client, runtime, syn


async def walk(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        sep = "&" if "?" in url else "?"
        r = await client.get(url + (f"{sep}cursor={cursor}" if cursor else ""))
        assert r.status_code == 200, r.text
        doc = r.json()
        items.extend(doc["items"])
        cursor = doc["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination never ended")


async def test_cursor_pages_walk_every_row_once_in_order(explorer: Any) -> None:
    client, runtime, syn = explorer
    miners = await walk(client, "/api/leaderboard/miners?limit=7")
    assert len(miners) == len(syn.miners) == len({m["address"] for m in miners})
    assert [m["rank"] for m in miners] == list(range(1, len(miners) + 1))
    keys = [(-m["reputation"], -m["earned"], m["address"]) for m in miners]
    assert keys == sorted(keys)
    assert all(m["trend"] is not None and m["tier"] for m in miners)
    validators = await walk(client, "/api/leaderboard/validators?limit=2")
    assert len(validators) == len(syn.validators)
    assert all(0 <= v["trust_score"] <= 1 for v in validators)
    blocks = await walk(client, "/api/blocks?limit=9")
    assert [b["height"] for b in blocks] == list(range(60, 0, -1))
    subs = await walk(client, "/api/submissions?limit=50")
    assert [s["id"] for s in subs] == list(range(600, 0, -1))
    rounds = await walk(client, "/api/rounds?limit=4")
    assert [r["number"] for r in rounds] == list(range(6, 0, -1))
    async with runtime.db.read() as session:
        signer = await session.scalar(select(IxTxAddress.address).limit(1))
    txs = await walk(client, f"/api/accounts/{signer}/txs?limit=1")
    assert txs and all(t["signer"] == signer for t in txs)
    assert [(t["height"], t["index"]) for t in txs] == sorted(
        ((t["height"], t["index"]) for t in txs), reverse=True
    )
    one_round = await walk(client, "/api/submissions?round=3&status=verified&limit=5")
    assert one_round and all(s["round"] == 3 and s["status"] == "verified" for s in one_round)


async def test_etags_answer_304_until_a_new_block(explorer: Any) -> None:
    client, runtime, syn = explorer
    first = await client.get("/api/network/stats")
    etag = first.headers["etag"]
    assert first.json()["height"] == 60
    again = await client.get("/api/network/stats", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag
    async with runtime.db.write() as s, s.begin():
        await s.execute(update(IxMeta).values(height=61))
    cached = await client.get("/api/network/stats")
    assert cached.json()["height"] == 60  # same block: the cached answer
    await explorer_service(runtime).cache.invalidate(61)
    fresh = await client.get("/api/network/stats", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.json()["height"] == 61
    assert fresh.headers["etag"] != etag


async def test_bad_input_gets_clear_errors(explorer: Any) -> None:
    client, _, syn = explorer
    bad_cursor = await client.get("/api/blocks?cursor=bm90LWEtY3Vyc29y")
    assert bad_cursor.status_code == 400
    assert "cursor is not valid" in bad_cursor.json()["error"]["message"]
    assert (await client.get("/api/blocks?limit=0")).status_code == 422
    assert (await client.get("/api/blocks?limit=201")).status_code == 422
    assert (await client.get("/api/proposals?status=merged")).status_code == 422
    assert (await client.get("/api/proposals?cursor=bm90LWEtY3Vyc29y")).status_code == 400
    assert (await client.get("/api/proposals")).json()["items"] == []
    bad_proposer = await client.get("/api/proposals?proposer=remes1nope")
    assert bad_proposer.status_code == 400
    assert bad_proposer.json()["error"]["message"].startswith("proposer:")
    bad = await client.get("/api/accounts/remes1notanaddress")
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("address:")
    for url in ("/api/rounds/999", "/api/submissions/99999", "/api/blocks/999"):
        r = await client.get(url)
        assert r.status_code == 404, url
    assert (await client.get("/api/txs/" + "AB" * 32)).status_code == 404
    assert (await client.get("/api/txs/xyz")).status_code == 400
    not_miner = await client.get(f"/api/miners/{syn.addresses[-1]}")
    assert not_miner.status_code == 404 and "not a registered miner" in not_miner.text
    ok = await client.get(f"/api/miners/{syn.miners[0]}")
    assert ok.status_code == 200 and ok.json()["node"]["role"] == "miner"


async def test_nothing_indexed_yet_is_503(tmp_path: Path, database_url: str) -> None:
    app = create_app(make_settings(tmp_path, database_url=database_url), start_workers=False)
    async with running(app) as client:
        r = await client.get("/api/network/stats")
    assert r.status_code == 503 and "not indexed" in r.json()["error"]["message"]


async def test_analytics_rolls_up_chat_per_day_and_model(explorer: Any) -> None:
    client, runtime, _ = explorer
    now = dt.datetime.now(dt.UTC)
    yesterday = now - dt.timedelta(days=1)
    rows = [
        (1, "m1", "ok", now),
        (1, "m1", "ok", now),
        (2, "m1", "error", now),
        (2, "m2", "ok", now),
        (3, "m1", "ok", yesterday),
        (1, "m1", "ok", yesterday),
    ]
    async with runtime.db.write() as s, s.begin():
        await s.execute(
            insert(ChatRequest),
            [
                {
                    "request_id": f"r{i}",
                    "account_id": account,
                    "model": model,
                    "status": status,
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "credits": 3,
                    "created_at": at,
                    "latency_ms": 1,
                }
                for i, (account, model, status, at) in enumerate(rows)
            ],
        )
    roller = ChatRoller(runtime.db, settle_s=10)
    assert await roller.step(now=100.0) == 0  # ids are not trusted until settled
    assert await roller.step(now=111.0) == 6
    assert await roller.step(now=200.0) == 0  # nothing counted twice
    await explorer_service(runtime).cache.invalidate(999)
    days = (await client.get("/api/analytics?days=2")).json()["days"]
    assert [d["day"] for d in days] == [yesterday.date().isoformat(), now.date().isoformat()]
    today = {c["model"]: c for c in days[1]["chat"]}
    assert today["m1"]["requests"] == 3 and today["m1"]["active_users"] == 2
    assert today["m1"]["errors"] == 1 and today["m1"]["credits"] == 9
    assert today["m2"]["active_users"] == 1
    assert days[0]["chat"][0]["active_users"] == 2
    assert days[1]["network"]["blocks"] >= 0
    stats = (await client.get("/api/network/stats")).json()
    assert stats["chat_users_30d"] == 3
    assert (await client.get("/api/analytics?days=0")).status_code == 422


async def test_cache_generation_is_shared_through_redis(redis_url: str, redis_prefix: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        writer = ExplorerCache(redis=redis, prefix=redis_prefix, ttl_s=5)
        reader = ExplorerCache(redis=redis, prefix=redis_prefix, ttl_s=5)
        await writer.invalidate(7)
        generation = await reader.current_generation()
        assert generation == 7
        await reader.put("/api/x", b"seven", generation=generation)
        assert await writer.get("/api/x", generation=await writer.current_generation()) == b"seven"
        await writer.invalidate(8)
        assert await reader.get("/api/x", generation=await reader.current_generation()) is None
    finally:
        await redis.aclose()


async def test_in_process_cache_drops_answers_of_older_blocks() -> None:
    cache = ExplorerCache(redis=None, prefix="t:", ttl_s=5)
    await cache.invalidate(3)
    await cache.put("/a", b"three", generation=3)
    await cache.put("/b", b"two", generation=2)  # computed before block 3: not kept
    assert await cache.get("/a", generation=3) == b"three"
    assert await cache.get("/b", generation=3) is None
    await cache.invalidate(4)
    assert await cache.get("/a", generation=4) is None


async def test_serving_shows_liveness_and_what_each_node_served(explorer: Any) -> None:
    client, runtime, syn = explorer
    operator = syn.addresses[-1]
    now = dt.datetime.now(dt.UTC)
    async with runtime.db.write() as s, s.begin():
        s.add(
            IxNode(
                role="serving",
                address=operator,
                endpoint="http://node",
                stake=10,
                registered_height=1,
                active=True,
                last_heartbeat_ms=syn.first_ms + 60 * syn.block_ms,
                adapter_version=2,
                capacity=4,
                heartbeats=9,
            )
        )
        await s.execute(
            insert(ChatRequest),
            [
                {
                    "request_id": f"served-{i}",
                    "account_id": 1,
                    "model": "m",
                    "node": operator,
                    "status": "ok" if i < 3 else "error",
                    "prompt_tokens": 10,
                    "completion_tokens": 20,
                    "credits": 5,
                    "created_at": now - dt.timedelta(hours=2 * (i % 2)),
                    "latency_ms": 1,
                }
                for i in range(4)
            ],
        )
    roller = ChatRoller(runtime.db, settle_s=0)
    await roller.step(now=1.0)
    await explorer_service(runtime).cache.invalidate(1000)
    nodes = (await client.get("/api/serving")).json()["nodes"]
    node = next(n for n in nodes if n["address"] == operator)
    assert (node["served_requests"], node["served_tokens"]) == (3, 90)
    assert node["requests_last_hour"] == 2 and node["live"] is True
    assert node["load"] == 2 / (4 * 60)
