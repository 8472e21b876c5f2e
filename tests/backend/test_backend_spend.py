"""Spending under pressure: 200 concurrent hold + capture sequences against credit for 50,
in one process (SQLite and PostgreSQL) and across two real `r3mes backend start` processes
sharing one PostgreSQL; and a backend SIGKILLed between hold and capture."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.accounts import api_key, audit, fund
from support.backend import fresh_postgres_database, make_settings, running
from support.backend_process import BackendProcess, backend_process

from r3mes.backend.app import create_app
from r3mes.backend.settings import BackendSettings
from r3mes.chain.crypto import SigningKey

pytestmark = pytest.mark.anyio

SPENDER = SigningKey(secret=bytes([5]) * 32)
PRICE = 7
AFFORDABLE = 50
SEQUENCES = 200


async def spend(client: httpx.AsyncClient, key: str, i: int) -> str:
    """One hold + capture of PRICE; the outcome's status ('ok', or the refusal's code)."""
    headers = {"X-API-Key": key, "Idempotency-Key": f"hold-{i}"}
    held = await client.post("/api/credits/holds", json={"amount": PRICE}, headers=headers)
    if held.status_code != 201:
        return str(held.status_code)
    hold_id = held.json()["id"]
    headers["Idempotency-Key"] = f"capture-{i}"
    done = await client.post(
        f"/api/credits/holds/{hold_id}/capture", json={"amount": PRICE}, headers=headers
    )
    return "ok" if done.status_code == 200 else f"capture {done.status_code}: {done.text}"


async def never_negative(client: httpx.AsyncClient, key: str, stop: asyncio.Event) -> int:
    """Poll the balance while spending runs; every sample must be >= 0."""
    samples = 0
    while not stop.is_set():
        me = (await client.get("/api/me", headers={"X-API-Key": key})).json()
        assert me["available"] >= 0 and me["held"] >= 0, me
        samples += 1
        await asyncio.sleep(0.02)
    return samples


async def run_spenders(clients: list[httpx.AsyncClient], key: str) -> Counter[str]:
    stop = asyncio.Event()
    watcher = asyncio.create_task(never_negative(clients[0], key, stop))
    outcomes = await asyncio.gather(
        *(spend(clients[i % len(clients)], key, i) for i in range(SEQUENCES))
    )
    stop.set()
    assert await watcher > 0
    return Counter(outcomes)


async def check_books(settings: BackendSettings, client: httpx.AsyncClient, key: str) -> None:
    me = (await client.get("/api/me", headers={"X-API-Key": key})).json()
    assert (me["available"], me["held"]) == (0, 0)
    imbalance, mismatches = await audit(settings)
    assert imbalance == 0 and mismatches == []


@pytest.mark.slow
async def test_concurrent_spend_in_one_process(settings: BackendSettings) -> None:
    async with running(create_app(settings)) as client:
        key = await api_key(client, SPENDER)
        await fund(settings, SPENDER.address, PRICE * AFFORDABLE)
        outcomes = await run_spenders([client], key)
        assert outcomes == Counter({"ok": AFFORDABLE, "402": SEQUENCES - AFFORDABLE})
        await check_books(settings, client, key)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


@pytest.mark.slow
def test_concurrent_spend_across_two_backend_processes(tmp_path: Path, postgres_url: str) -> None:
    settings = make_settings(tmp_path / "test", database_url=postgres_url)
    env = {"R3MES_DATABASE_URL": postgres_url}
    with (
        backend_process(tmp_path / "a", **env) as a,
        backend_process(tmp_path / "b", **env) as b,
    ):

        async def scenario() -> Counter[str]:
            limits = httpx.Limits(max_connections=32)
            async with (
                httpx.AsyncClient(base_url=a.url, timeout=60, limits=limits) as ca,
                httpx.AsyncClient(base_url=b.url, timeout=60, limits=limits) as cb,
            ):
                key = await api_key(ca, SPENDER)
                await fund(settings, SPENDER.address, PRICE * AFFORDABLE)
                outcomes = await run_spenders([ca, cb], key)
                await check_books(settings, cb, key)
                return outcomes

        outcomes = asyncio.run(scenario())
    assert outcomes == Counter({"ok": AFFORDABLE, "402": SEQUENCES - AFFORDABLE})


@pytest.mark.slow
def test_sigkill_between_hold_and_capture_loses_nothing(tmp_path: Path) -> None:
    """A hold left open by a killed backend is released by expiry after the restart."""
    home = tmp_path / "home"
    settings = make_settings(home)
    backend = BackendProcess(home, R3MES_HOLD_TTL_S="5")
    backend.start()
    try:

        async def before_crash() -> tuple[str, int]:
            async with httpx.AsyncClient(base_url=backend.url, timeout=30) as c:
                key = await api_key(c, SPENDER)
                await fund(settings, SPENDER.address, 100)
                assert await spend(c, key, 0) == "ok"  # one settled charge before the crash
                headers = {"X-API-Key": key, "Idempotency-Key": "in-flight"}
                held = await c.post("/api/credits/holds", json={"amount": 40}, headers=headers)
                assert held.status_code == 201, held.text
                return key, int(held.json()["id"])

        key, hold_id = asyncio.run(before_crash())
        backend.kill()
        backend.start()

        async def after_restart() -> dict[str, int]:
            async with httpx.AsyncClient(base_url=backend.url, timeout=30) as c:
                headers = {"X-API-Key": key}
                deadline = time.monotonic() + 30
                while True:
                    me = (await c.get("/api/me", headers=headers)).json()
                    if me["held"] == 0 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.25)
                late = await c.post(
                    f"/api/credits/holds/{hold_id}/capture",
                    json={"amount": 40},
                    headers={**headers, "Idempotency-Key": "late-capture"},
                )
                assert late.status_code == 409, late.text
                # The settled charge from before the crash is still there, exactly once.
                journal = (await c.get("/api/me/transactions", headers=headers)).json()
                kinds = Counter(t["kind"] for t in journal["transactions"])
                assert kinds == Counter({"deposit": 1, "hold": 2, "capture": 1, "release": 1})
                return {"available": me["available"], "held": me["held"]}

        assert asyncio.run(after_restart()) == {"available": 100 - PRICE, "held": 0}
    finally:
        backend.stop()
    imbalance, mismatches = asyncio.run(audit(settings))
    assert imbalance == 0 and mismatches == []


async def test_the_holds_api_cannot_settle_the_gateways_holds(client: httpx.AsyncClient) -> None:
    """A chat request's hold (ref `chat:...`, listed in /api/me) is the gateway's to settle:
    capturing it for 0 or releasing it through /api/credits would make the chat free."""
    from r3mes.backend.services import credits

    settings: BackendSettings = client._transport.app.state.runtime.settings  # type: ignore[attr-defined]
    key = await api_key(client, SPENDER)
    account_id = await fund(settings, SPENDER.address, 100)
    runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.db.write() as s, s.begin():
        chat_hold = await credits.hold(
            s,
            account_id=account_id,
            amount=60,
            idempotency_key="chat:r1:hold",
            ttl_s=60,
            ref="chat:r1",
        )
    me = (await client.get("/api/me", headers={"X-API-Key": key})).json()
    assert [h["id"] for h in me["holds"]] == [chat_hold.id]
    for action, body in (("capture", {"amount": 0}), ("release", None)):
        r = await client.post(
            f"/api/credits/holds/{chat_hold.id}/{action}",
            json=body,
            headers={"X-API-Key": key, "Idempotency-Key": f"steal-{action}"},
        )
        assert r.status_code == 404, (action, r.status_code, r.text)
    # the gateway still settles it, and the API's own holds still work
    async with runtime.db.write() as s, s.begin():
        await credits.capture(
            s, hold_id=chat_hold.id, amount=50, idempotency_key="chat:r1:capture", node="op"
        )
    assert await spend(client, key, 1) == "ok"
    me = (await client.get("/api/me", headers={"X-API-Key": key})).json()
    assert (me["available"], me["held"]) == (100 - 50 - PRICE, 0)
