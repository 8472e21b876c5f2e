"""Paid chat under faults and abuse: a serving node killed under load and restarted, 200
concurrent streams on a balance that covers 20. Stub nodes run as real processes (SIGKILL).

The invariant checked everywhere: each request's captured credits equal the tokens it
delivered times the price, and no balance goes below zero.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from support.backend import make_settings
from support.chat import balance, funded_key, serving_backend
from support.upstream import ADAPTER, UpstreamProcess

from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.services.billing import Usage, cost, prompt_token_bound
from r3mes.backend.settings import BackendSettings, ChatPrice

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PRICE = ChatPrice(prompt_per_1k=100, completion_per_1k=1000)
OPERATORS = ("remes1killed", "remes1steady")
BODY = {"model": ADAPTER, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@dataclass
class Outcome:
    request_id: str | None
    node: str | None
    status: int
    tokens: int
    """Content chunks the client received."""
    error_event: bool
    done: bool


async def stream_once(c: httpx.AsyncClient, key: str) -> Outcome:
    doc = {**BODY, "stream": True}
    async with c.stream(
        "POST", "/v1/chat/completions", json=doc, headers={"authorization": f"Bearer {key}"}
    ) as r:
        if r.status_code != 200:
            await r.aread()
            return Outcome(None, None, r.status_code, 0, False, False)
        tokens, error, done = 0, False, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = True
            elif event.get("choices") and event["choices"][0]["delta"].get("content"):
                tokens += 1
        return Outcome(
            r.headers["x-request-id"], r.headers["x-r3mes-node"], 200, tokens, error, done
        )


async def chat_rows(settings: BackendSettings) -> dict[str, ChatRequest]:
    db = Database(settings)
    try:
        async with db.read() as s:
            return {r.request_id: r for r in (await s.scalars(select(ChatRequest))).all()}
    finally:
        await db.dispose()


def check_billing(outcomes: list[Outcome], rows: dict[str, ChatRequest]) -> None:
    """Every answered request is billed for exactly the tokens its client received."""
    for o in outcomes:
        if o.request_id is None:
            continue
        row = rows[o.request_id]
        assert row.completion_tokens == o.tokens, (o, row.status)
        assert row.credits == cost(PRICE, Usage(row.prompt_tokens, row.completion_tokens))
        if o.done and not o.error_event:
            assert row.status == "ok"


@pytest.fixture
def procs() -> Iterator[list[UpstreamProcess]]:
    nodes = [
        UpstreamProcess(words=8, token_delay_s=0.03).start(),
        UpstreamProcess(words=8, token_delay_s=0.03).start(),
    ]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def settings_for(tmp_path: Path, nodes: list[UpstreamProcess], **extra: object) -> BackendSettings:
    return make_settings(
        tmp_path,
        chat_prices={ADAPTER: PRICE},
        serving_endpoints=tuple(f"{op}={n.url}" for op, n in zip(OPERATORS, nodes, strict=True)),
        node_probe_interval_s=0.2,
        node_cooldown_s=1.0,
        node_failures_to_trip=2,
        chat_first_byte_timeout_s=10.0,  # a kill is a refused connection, not a silent node
        **extra,
    )


async def test_kill_a_node_under_load_then_restart_it(
    tmp_path: Path, procs: list[UpstreamProcess]
) -> None:
    with serving_backend(settings_for(tmp_path, procs), wait_nodes=2) as backend:
        funded = await funded_key(backend.settings, 10**9)
        outcomes: list[tuple[float, Outcome]] = []
        stop = asyncio.Event()

        async def client(c: httpx.AsyncClient) -> None:
            while not stop.is_set():
                outcomes.append((time.monotonic(), await stream_once(c, funded.key)))

        async with httpx.AsyncClient(base_url=backend.url, timeout=20) as c:
            load = [asyncio.create_task(client(c)) for _ in range(6)]
            await asyncio.sleep(1.5)
            # kill while streams are in flight there (a loaded machine may lag the clock)
            await wait_until(lambda: _in_flight(backend.url, OPERATORS[0]) >= 2)
            killed_at = time.monotonic()
            procs[0].kill()
            await asyncio.sleep(2.5)
            restarted_at = time.monotonic()  # before it exists: nothing earlier can reach it
            restarted = UpstreamProcess(port=procs[0].port, words=8, token_delay_s=0.03).start()
            procs.append(restarted)
            await wait_until(lambda: _served_by(outcomes, OPERATORS[0], after=restarted_at))
            stop.set()
            await asyncio.gather(*load)

        before = [o for t, o in outcomes if t < killed_at]
        during = [o for t, o in outcomes if killed_at + 0.5 < t < restarted_at]
        assert {o.node for o in before} == set(OPERATORS)  # both served before the kill
        assert during and {o.node for o in during} == {OPERATORS[1]}  # its share stopped
        statuses = Counter(o.status for _, o in outcomes)
        assert set(statuses) == {200}, statuses  # no-first-byte requests were retried
        broken = [o for _, o in outcomes if o.error_event]
        assert broken and all(o.node == OPERATORS[0] and o.done for o in broken)  # clean errors
        rows = await chat_rows(backend.settings)
        check_billing([o for _, o in outcomes], rows)
        have = await balance(backend.settings, funded.account_id)
        assert have.held == 0
        assert have.available == 10**9 - sum(r.credits for r in rows.values())
        metrics = httpx.get(f"{backend.url}/metrics", timeout=30).text
        assert f'r3mes_gateway_upstream_failures_total{{node="{OPERATORS[0]}"' in metrics


def _in_flight(url: str, operator: str) -> int:
    """Requests the gateway has open on `operator`'s node, from its /health."""
    health = httpx.get(f"{url}/health", timeout=30).json()
    nodes = health["checks"]["serving_nodes"]["nodes"].values()
    return sum(int(n["in_flight"]) for n in nodes if n["operator"] == operator)


def _served_by(outcomes: list[tuple[float, Outcome]], node: str, *, after: float) -> bool:
    return any(o.node == node for t, o in outcomes if t > after)


async def wait_until(condition: object, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


async def test_200_concurrent_streams_on_a_balance_for_20(
    tmp_path: Path, procs: list[UpstreamProcess], database_url: str
) -> None:
    # streams of 12 s: all 200 requests arrive while the first 20 still hold their credits
    slow = [UpstreamProcess(words=8, token_delay_s=1.5).start() for _ in range(2)]
    procs.extend(slow)
    settings = settings_for(tmp_path, slow, database_url=database_url)
    hold = cost(PRICE, Usage(prompt_token_bound(BODY), BODY["max_tokens"]))  # type: ignore[arg-type]
    with serving_backend(settings, wait_nodes=2) as backend:
        funded = await funded_key(backend.settings, 20 * hold)
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=backend.url, timeout=60, limits=limits) as c:
            outcomes = await asyncio.gather(*(stream_once(c, funded.key) for _ in range(200)))
        statuses = Counter(o.status for o in outcomes)
        assert statuses == {200: 20, 402: 180}, statuses
        rows = await chat_rows(backend.settings)
        check_billing(list(outcomes), rows)
        have = await balance(backend.settings, funded.account_id)
        assert have.held == 0 and have.available >= 0
        assert have.available == 20 * hold - sum(r.credits for r in rows.values())
