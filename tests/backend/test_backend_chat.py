"""Paid chat end to end over real sockets: the backend on uvicorn, two stub serving nodes.

Billing is checked to the credit: every captured charge equals the node's reported usage (or
the tokens delivered, for a stream cut short) times the configured price.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from support.backend import make_settings
from support.chat import BackendServer, Funded, balance, funded_key, serving_backend
from support.upstream import ADAPTER, BASE, Upstream, prompt_tokens

from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.services.billing import Usage, cost
from r3mes.backend.settings import BackendSettings, ChatPrice

pytestmark = pytest.mark.anyio

PRICE = ChatPrice(prompt_per_1k=100, completion_per_1k=1000)
OPERATORS = ("remes1operator0", "remes1operator1")


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    nodes = [Upstream().start(), Upstream().start()]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def chat_settings(
    tmp_path: Path, database_url: str, upstreams: list[Upstream], **extra: object
) -> BackendSettings:
    values: dict[str, object] = {
        "database_url": database_url,
        "chat_prices": {ADAPTER: PRICE, BASE: PRICE},
        "serving_endpoints": tuple(
            f"{op}={u.url}" for op, u in zip(OPERATORS, upstreams, strict=False)
        ),
        "node_probe_interval_s": 0.2,
        "node_cooldown_s": 0.5,
        "node_failures_to_trip": 2,
        "chat_first_byte_timeout_s": 2.0,
        "chat_upstream_timeout_s": 10.0,
    }
    values.update(extra)
    return make_settings(tmp_path, **values)


@pytest.fixture
def backend(
    tmp_path: Path, database_url: str, upstreams: list[Upstream]
) -> Iterator[BackendServer]:
    with serving_backend(chat_settings(tmp_path, database_url, upstreams), wait_nodes=2) as b:
        b.upstreams = upstreams
        yield b


def body(*, stream: bool = False, max_tokens: int = 4, model: str = ADAPTER) -> dict[str, object]:
    doc: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
    }
    if stream:
        doc["stream"] = True
    return doc


def expected_cost(doc: dict[str, object], completion: int) -> int:
    return cost(PRICE, Usage(prompt_tokens(doc), completion))


async def rows(settings: BackendSettings) -> list[ChatRequest]:
    db = Database(settings)
    try:
        async with db.read() as s:
            return list((await s.scalars(select(ChatRequest).order_by(ChatRequest.id))).all())
    finally:
        await db.dispose()


def auth(funded: Funded) -> dict[str, str]:
    return {"authorization": f"Bearer {funded.key}"}


async def test_chat_bills_reported_usage_and_says_who_served(backend: BackendServer) -> None:
    funded = await funded_key(backend.settings, 10_000)
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=body(), headers=auth(funded))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["model"] == ADAPTER and doc["usage"]["completion_tokens"] == 4
        assert r.headers["x-r3mes-node"] in OPERATORS
        for name in ("requests", "tokens"):
            for what in ("limit", "remaining", "reset"):
                assert f"x-ratelimit-{what}-{name}" in r.headers
        text = await c.post(
            "/v1/completions",
            json={"model": BASE, "prompt": "once upon", "max_tokens": 3},
            headers={"x-api-key": funded.key},
        )
        assert text.status_code == 200 and text.json()["choices"][0]["text"]
        prices = (await c.get("/v1/pricing")).json()
        assert prices["models"][ADAPTER] == PRICE.model_dump()
        metrics = (await c.get("/metrics")).text
        health = (await c.get("/health")).json()
    node = r.headers["x-r3mes-node"]
    assert f'r3mes_gateway_requests_total{{model="{ADAPTER}",node="{node}",status="ok"}} 1.0' in (
        metrics
    )
    assert f'r3mes_gateway_ttft_seconds_count{{model="{ADAPTER}"}} 1.0' in metrics
    assert f'r3mes_gateway_request_seconds_count{{model="{BASE}"}} 1.0' in metrics
    assert f'r3mes_gateway_tokens_total{{kind="completion",model="{ADAPTER}"}} 4.0' in metrics
    assert 'r3mes_gateway_credits_total{stage="captured"}' in metrics
    assert 'r3mes_gateway_credits_total{stage="held"}' in metrics
    nodes = health["checks"]["serving_nodes"]["nodes"]
    assert set(nodes) == set(OPERATORS) and all(n["ok"] for n in nodes.values())
    spent = expected_cost(body(), 4) + cost(PRICE, Usage(len(b"once upon") // 4 + 3, 3))
    have = await balance(backend.settings, funded.account_id)
    assert (have.available, have.held) == (10_000 - spent, 0)
    recorded = await rows(backend.settings)
    assert [(r.status, r.credits, r.node in OPERATORS) for r in recorded] == [
        ("ok", expected_cost(body(), 4), True),
        ("ok", spent - expected_cost(body(), 4), True),
    ]


async def test_openai_client_works_unchanged(backend: BackendServer) -> None:
    from openai import AsyncOpenAI

    funded = await funded_key(backend.settings, 10_000)
    client = AsyncOpenAI(api_key=funded.key, base_url=f"{backend.url}/v1", max_retries=0)
    try:
        models = [m.id for m in (await client.models.list()).data]
        assert {BASE, ADAPTER} <= set(models)
        reply = await client.chat.completions.create(
            model=ADAPTER, messages=[{"role": "user", "content": "hello there"}], max_tokens=4
        )
        assert reply.choices[0].message.content == " w0 w1 w2 w3"
        assert reply.usage is not None and reply.usage.completion_tokens == 4
        stream = await client.chat.completions.create(
            model=ADAPTER,
            messages=[{"role": "user", "content": "hello there"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(parts) == " w0 w1 w2 w3 w4"
        assert usage is not None and usage.completion_tokens == 5
        text = await client.completions.create(model=BASE, prompt="once upon", max_tokens=2)
        assert text.choices[0].text == " w0 w1"
        with pytest.raises(Exception) as missing:
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
        assert getattr(missing.value, "status_code", None) == 404
        bad = AsyncOpenAI(api_key="r3mes_wrong", base_url=f"{backend.url}/v1", max_retries=0)
        with pytest.raises(Exception) as denied:
            await bad.models.list()
        assert getattr(denied.value, "status_code", None) == 401
    finally:
        await client.close()
    spent = (
        expected_cost(body(), 4)
        + expected_cost(body(), 5)
        + cost(PRICE, Usage(len(b"once upon") // 4 + 3, 2))
    )
    have = await balance(backend.settings, funded.account_id)
    assert have.available == 10_000 - spent and have.held == 0


async def test_stream_usage_chunk_only_when_asked(backend: BackendServer) -> None:
    funded = await funded_key(backend.settings, 10_000)
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        for asked in (False, True):
            doc = body(stream=True)
            if asked:
                doc["stream_options"] = {"include_usage": True}
            events = []
            async with c.stream(
                "POST", "/v1/chat/completions", json=doc, headers=auth(funded)
            ) as r:
                assert r.status_code == 200 and r.headers["x-r3mes-node"] in OPERATORS
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
            assert events[-1] == "[DONE]"
            usage = [json.loads(e)["usage"] for e in events[:-1] if "usage" in json.loads(e)]
            assert len(usage) == (1 if asked else 0)
    have = await balance(backend.settings, funded.account_id)
    assert have.available == 10_000 - 2 * expected_cost(body(), 4)


async def test_errors_in_openai_shapes(backend: BackendServer) -> None:
    poor = await funded_key(backend.settings, 1)
    rich = await funded_key(backend.settings, 10**9)
    reader = await funded_key(backend.settings, 100, scopes=("read",))
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=body())
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await c.post("/v1/chat/completions", json=body(), headers=auth(reader))
        assert r.status_code == 403
        r = await c.post("/v1/chat/completions", json=body(model="gpt-9"), headers=auth(rich))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "x-ratelimit-remaining-requests" in r.headers
        r = await c.post("/v1/chat/completions", json=body(), headers=auth(poor))
        assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_quota"
        r = await c.post(
            "/v1/chat/completions",
            content=b'{"model": "' + b"x" * (2 << 20) + b'"}',
            headers={**auth(rich), "content-type": "application/json"},
        )
        assert r.status_code == 413
        r = await c.post("/v1/chat/completions", content=b"{nope", headers=auth(rich))
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await c.post(
            "/v1/chat/completions", json={**body(), "max_tokens": -1}, headers=auth(rich)
        )
        assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
        # a huge max_tokens is clamped to the cap: forwarded and held at the cap, not more
        r = await c.post("/v1/chat/completions", json=body(max_tokens=10**9), headers=auth(rich))
        assert r.status_code == 200
    forwarded = [b["max_tokens"] for u in backend.upstreams for b in u.behaviour.bodies]
    assert max(forwarded) == backend.settings.chat_max_tokens_cap
    have = await balance(backend.settings, poor.account_id)
    assert (have.available, have.held) == (1, 0)


async def test_no_serving_node_is_503(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, serving_endpoints=("http://127.0.0.1:9",))
    with serving_backend(settings) as backend:
        funded = await funded_key(backend.settings, 1000)
        async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
            r = await c.post("/v1/chat/completions", json=body(), headers=auth(funded))
            assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
            health = (await c.get("/health")).json()
            assert health["checks"]["serving_nodes"]["ok"] is False
    assert (await balance(settings, funded.account_id)).available == 1000


async def test_idempotency_key_replays_and_bills_once(backend: BackendServer) -> None:
    funded = await funded_key(backend.settings, 10_000)
    headers = {**auth(funded), "idempotency-key": "order-42"}
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        first = await c.post("/v1/chat/completions", json=body(), headers=headers)
        again = await c.post("/v1/chat/completions", json=body(), headers=headers)
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
        other = await c.post("/v1/chat/completions", json=body(max_tokens=3), headers=headers)
        assert other.status_code == 409
    have = await balance(backend.settings, funded.account_id)
    assert have.available == 10_000 - expected_cost(body(), 4)
    assert len(await rows(backend.settings)) == 1


async def test_rate_limits_answer_429_with_retry_after(
    tmp_path: Path, database_url: str, upstreams: list[Upstream]
) -> None:
    from r3mes.backend.settings import RateTier

    settings = chat_settings(
        tmp_path, database_url, upstreams, rate_tiers={"default": RateTier(requests_per_min=3)}
    )
    with serving_backend(settings, wait_nodes=2) as backend:
        funded = await funded_key(backend.settings, 10_000)
        async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
            seen = [
                await c.post("/v1/chat/completions", json=body(), headers=auth(funded))
                for _ in range(4)
            ]
            assert [r.status_code for r in seen] == [200, 200, 200, 429]
            assert [r.headers["x-ratelimit-remaining-requests"] for r in seen] == [
                "2",
                "1",
                "0",
                "0",
            ]
            limited = seen[-1]
            assert limited.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(limited.headers["retry-after"]) <= 20
            metrics = (await c.get("/metrics")).text
            assert 'r3mes_gateway_rate_limited_total{scope="key"} 1.0' in metrics


async def test_client_disconnect_cancels_upstream_and_pays_delivered(
    backend: BackendServer,
) -> None:
    nodes = backend.upstreams
    for node in nodes:
        node.behaviour.words = 50
        node.behaviour.token_delay_s = 0.05
    funded = await funded_key(backend.settings, 100_000)
    received = 0
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        async with c.stream(
            "POST",
            "/v1/chat/completions",
            json=body(stream=True, max_tokens=50),
            headers=auth(funded),
        ) as r:
            async for line in r.aiter_lines():
                if '"content": " w' in line or '"content":" w' in line:
                    received += 1
                if received == 5:
                    break
    await wait_for(lambda: sum(n.behaviour.cancelled for n in nodes) == 1)
    found = await wait_rows(backend.settings, 1)
    (row,) = found
    assert row.status == "cancelled"
    delivered = sum(n.behaviour.delivered_tokens for n in nodes)
    assert 5 <= row.completion_tokens <= delivered < 50
    # the prompt is paid too: nodes report usage so far on every chunk
    assert row.prompt_tokens == prompt_tokens(body(stream=True, max_tokens=50)) > 0
    assert row.credits == cost(PRICE, Usage(row.prompt_tokens, row.completion_tokens))
    have = await balance(backend.settings, funded.account_id)
    assert (have.available, have.held) == (100_000 - row.credits, 0)


async def wait_rows(
    settings: BackendSettings, count: int, timeout_s: float = 10
) -> list[ChatRequest]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(found := await rows(settings)) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{len(found)} chat rows, expected {count}")
        await asyncio.sleep(0.05)
    return found


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


async def test_two_backends_share_rate_limits_through_redis(
    tmp_path: Path,
    database_url: str,
    upstreams: list[Upstream],
    redis_url: str,
    redis_prefix: str,
) -> None:
    from r3mes.backend.settings import RateTier

    settings = chat_settings(
        tmp_path,
        database_url,
        upstreams,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        rate_tiers={"default": RateTier(requests_per_min=4)},
    )
    with (
        serving_backend(settings, wait_nodes=2) as one,
        serving_backend(settings, wait_nodes=2) as two,
    ):
        funded = await funded_key(one.settings, 10_000)
        seen = []
        async with httpx.AsyncClient(timeout=10) as c:
            for url in (one.url, two.url) * 3:
                r = await c.post(f"{url}/v1/chat/completions", json=body(), headers=auth(funded))
                seen.append(r.status_code)
        assert seen == [200, 200, 200, 200, 429, 429]  # 4 per minute across both processes
        health = one.health()["checks"]
        assert health["redis"]["ok"] is True  # type: ignore[index]


async def test_malformed_bodies_and_headers_are_clear_4xx_never_500(
    backend: BackendServer,
) -> None:
    rich = await funded_key(backend.settings, 10**9)
    bad: list[tuple[bytes, dict[str, str]]] = [
        (b"[" * 100_000, {}),  # nesting deeper than the JSON parser recurses
        (b'{"model": "' + ADAPTER.encode() + b'", "messages": [' * 50_000, {}),
        (b'{"model": 5, "messages": []}', {}),
        (b'{"model": "' + ADAPTER.encode() + b'", "messages": "hi"}', {}),
        (b'{"model": "' + ADAPTER.encode() + b'", "messages": [{}], "max_tokens": 1.5}', {}),
        (b'{"model": "' + ADAPTER.encode() + b'", "messages": [{}], "stream": "yes"}', {}),
        (b'{"model": "' + ADAPTER.encode() + b'", "messages": [{"content": "\\ud800"}]}', {}),
        (b'{"model": "' + ADAPTER.encode() + b'@\xc2\xb2", "messages": [{}]}', {}),
        (b'{"model": "' + ADAPTER.encode() + b'", "messages": [{}], "max_tokens": 1e400}', {}),
        (json.dumps(body()).encode(), {"idempotency-key": "k" * 5000}),
        (json.dumps(body()).encode(), {"idempotency-key": ""}),
    ]
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        for content, extra in bad:
            r = await c.post(
                "/v1/chat/completions",
                content=content,
                headers={**auth(rich), "content-type": "application/json", **extra},
            )
            # 404 model_not_found for a model name no node serves, 400 for the rest
            assert r.status_code in (400, 404), (content[:60], extra, r.status_code, r.text[:200])
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"]
    have = await balance(backend.settings, rich.account_id)
    assert (have.available, have.held) == (10**9, 0)


@pytest.mark.slow
async def test_a_stream_longer_than_the_hold_ttl_is_still_billed(
    tmp_path: Path, database_url: str, upstreams: list[Upstream]
) -> None:
    """A chat hold outlives the longest request it pays for, whatever `hold_ttl_s` says:
    with holds of 5 s, a 7 s stream was released by the sweeper first and paid nothing."""
    settings = chat_settings(tmp_path, database_url, upstreams, hold_ttl_s=5)
    for node in upstreams:
        node.behaviour.words = 7
        node.behaviour.token_delay_s = 1.0
    with serving_backend(settings, wait_nodes=2) as backend:
        funded = await funded_key(backend.settings, 100_000)
        doc = body(stream=True, max_tokens=7)
        async with httpx.AsyncClient(base_url=backend.url, timeout=30) as c:
            async with c.stream(
                "POST", "/v1/chat/completions", json=doc, headers=auth(funded)
            ) as r:
                assert r.status_code == 200
                text = "".join([line async for line in r.aiter_lines()])
        assert "[DONE]" in text
        (row,) = await wait_rows(backend.settings, 1)
        assert row.status == "ok" and row.completion_tokens == 7
        assert row.credits == expected_cost(doc, 7) > 0
        have = await balance(backend.settings, funded.account_id)
        assert (have.available, have.held) == (100_000 - row.credits, 0)


async def test_settling_retries_a_transaction_the_database_refused(
    backend: BackendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy or briefly lost database while settling does not make the request free: the
    settlement transaction is tried again (capture is idempotent by key)."""
    from sqlalchemy.exc import OperationalError

    from r3mes.backend.services import billing

    real_record = billing.record_in
    failures = [1]

    def flaky_record(*args: object, **kwargs: object) -> None:
        if failures:
            failures.pop()
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        real_record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(billing, "record_in", flaky_record)
    funded = await funded_key(backend.settings, 10_000)
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=body(), headers=auth(funded))
        assert r.status_code == 200, r.text
    assert failures == []
    (row,) = await wait_rows(backend.settings, 1)
    assert row.credits == expected_cost(body(), 4) > 0
    have = await balance(backend.settings, funded.account_id)
    assert (have.available, have.held) == (10_000 - row.credits, 0)


async def test_a_database_pool_out_of_connections_is_503_with_retry_after(
    backend: BackendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pooled connection busy past the pool's timeout is an overload: 503 with
    Retry-After in OpenAI's shape, not a 500, and nothing is held or charged."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from r3mes.backend.services import holds

    def exhausted(*args: object, **kwargs: object) -> None:
        raise PoolTimeout("QueuePool limit of size 20 overflow 20 reached")

    monkeypatch.setattr(holds, "hold_in", exhausted)
    funded = await funded_key(backend.settings, 10_000)
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=body(), headers=auth(funded))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "server_error"
    assert "busy" in r.json()["error"]["message"] and "QueuePool" not in r.text
    have = await balance(backend.settings, funded.account_id)
    assert (have.available, have.held) == (10_000, 0)


async def test_an_idempotency_key_left_by_a_crashed_request_is_taken_over(
    backend: BackendServer,
) -> None:
    """A claim a dead backend left unanswered blocks its key only while a request could still
    be running; then a retry with that key is served (and billed) once."""
    from datetime import UTC, datetime, timedelta

    from r3mes.backend.db.chat import ChatIdempotency

    funded = await funded_key(backend.settings, 10_000)
    db = Database(backend.settings)
    try:
        async with db.write() as s, s.begin():
            for key, age_s in (("crashed-long-ago", 7200), ("crashed-just-now", 1)):
                s.add(
                    ChatIdempotency(
                        account_id=funded.account_id,
                        key=key,
                        request_hash="0" * 64,
                        status_code=None,
                        body="",
                        headers="{}",
                        created_at=datetime.now(UTC) - timedelta(seconds=age_s),
                    )
                )
    finally:
        await db.dispose()
    async with httpx.AsyncClient(base_url=backend.url, timeout=10) as c:
        recent = await c.post(
            "/v1/chat/completions",
            json=body(),
            headers={**auth(funded), "idempotency-key": "crashed-just-now"},
        )
        assert recent.status_code == 409  # its first request may still be running
        headers = {**auth(funded), "idempotency-key": "crashed-long-ago"}
        first = await c.post("/v1/chat/completions", json=body(), headers=headers)
        assert first.status_code == 200, first.text
        again = await c.post("/v1/chat/completions", json=body(), headers=headers)
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    have = await balance(backend.settings, funded.account_id)
    assert (have.available, have.held) == (10_000 - expected_cost(body(), 4), 0)
