"""`/api/me` top-up details and `/api/me/usage`: the caller's chat per day (both databases)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from support.backend import make_settings, running
from support.chat import funded_key

from r3mes.backend.app import create_app
from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.settings import BackendSettings
from r3mes.chain.crypto import SigningKey

pytestmark = pytest.mark.anyio
DEPOSIT = SigningKey.generate().address


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> BackendSettings:
    return make_settings(tmp_path, database_url=database_url, deposit_address=DEPOSIT)


@pytest.fixture
async def client(settings: BackendSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as c:
        yield c


async def _record(settings: BackendSettings, rows: list[ChatRequest]) -> None:
    db = Database(settings)
    try:
        async with db.write() as s, s.begin():
            s.add_all(rows)
    finally:
        await db.dispose()


def _row(
    account_id: int, when: datetime, *, prompt: int, completion: int, credits: int
) -> ChatRequest:
    return ChatRequest(
        request_id=f"r-{account_id}-{when.timestamp()}-{prompt}",
        account_id=account_id,
        model="r3mes-adapter",
        status="ok",
        prompt_tokens=prompt,
        completion_tokens=completion,
        credits=credits,
        created_at=when,
        latency_ms=5,
    )


async def test_usage_groups_the_callers_chat_by_day(
    client: httpx.AsyncClient, settings: BackendSettings
) -> None:
    me = await funded_key(settings, 1000)
    other = await funded_key(settings, 1000)
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    yesterday = now - timedelta(days=1)
    await _record(
        settings,
        [
            _row(me.account_id, now, prompt=10, completion=5, credits=3),
            _row(me.account_id, now + timedelta(minutes=5), prompt=20, completion=7, credits=4),
            _row(me.account_id, yesterday, prompt=1, completion=2, credits=1),
            _row(me.account_id, now - timedelta(days=40), prompt=9, completion=9, credits=9),
            _row(other.account_id, now, prompt=100, completion=100, credits=100),
        ],
    )
    answer = await client.get("/api/me/usage?days=7", headers={"X-API-Key": me.key})
    assert answer.status_code == 200, answer.text
    days = answer.json()["usage"]
    assert [d["day"] for d in days] == [yesterday.date().isoformat(), now.date().isoformat()]
    assert days[1] == {
        "day": now.date().isoformat(),
        "requests": 2,
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "credits": 7,
    }
    assert days[0]["requests"] == 1 and days[0]["credits"] == 1
    for bad in ("0", "367", "x"):
        refused = await client.get(f"/api/me/usage?days={bad}", headers={"X-API-Key": me.key})
        assert refused.status_code == 422 and "days" in refused.json()["error"]["message"]
    assert (await client.get("/api/me/usage")).status_code == 401


async def test_me_says_where_to_deposit(
    client: httpx.AsyncClient, settings: BackendSettings
) -> None:
    me = await funded_key(settings, 10)
    body = (await client.get("/api/me", headers={"X-API-Key": me.key})).json()
    assert body["deposit_address"] == DEPOSIT
    assert body["chain_id"] == settings.chain_id and body["chain_rpc"] == settings.chain_rpc
