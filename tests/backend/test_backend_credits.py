"""The credit ledger on SQLite and PostgreSQL: balanced journal, idempotency, no over-spend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from r3mes.backend.db import accounts as tables
from r3mes.backend.db.engine import Database
from r3mes.backend.db.migrate import migrate
from r3mes.backend.errors import Conflict, InsufficientCredits, InvalidRequest
from r3mes.backend.services import credits
from r3mes.backend.settings import BackendSettings

pytestmark = pytest.mark.anyio

ADDRESS = "remes1qqqsyqcyq5rqwzqfpg9scrgwpugpzysn3v7clr"


@pytest.fixture
async def db(settings: BackendSettings) -> AsyncIterator[Database]:
    database = Database(settings)
    await migrate(database)
    try:
        yield database
    finally:
        await database.dispose()


async def funded(db: Database, amount: int, address: str = ADDRESS) -> int:
    async with db.write() as s, s.begin():
        account_id = await credits.ensure_account(s, address=address)
        if amount:
            await credits.deposit(s, account_id=account_id, amount=amount, idempotency_key="seed")
    return account_id


async def consistent(db: Database) -> None:
    async with db.read() as s:
        assert await credits.journal_imbalance(s) == 0
        assert await credits.book_mismatches(s) == []


async def test_hold_capture_release_move_credits_and_balance(db: Database) -> None:
    account = await funded(db, 100)
    async with db.write() as s, s.begin():
        first = await credits.hold(s, account_id=account, amount=30, idempotency_key="h1", ttl_s=60)
        second = await credits.hold(
            s, account_id=account, amount=20, idempotency_key="h2", ttl_s=60
        )
        assert await credits.balance(s, account_id=account) == credits.Balance(50, 50)
        done = await credits.capture(
            s, hold_id=first.id, amount=12, idempotency_key="c1", node="remes1node"
        )
        assert (done.amount, done.released) == (12, 18)
        await credits.release(s, hold_id=second.id, idempotency_key="r2")
        await credits.refund(s, account_id=account, amount=2, idempotency_key="f1")
        assert await credits.balance(s, account_id=account) == credits.Balance(90, 0)
    await consistent(db)


async def test_idempotent_retry_returns_first_result_and_other_body_conflicts(
    db: Database,
) -> None:
    account = await funded(db, 100)
    async with db.write() as s, s.begin():
        a = await credits.hold(s, account_id=account, amount=10, idempotency_key="k", ttl_s=60)
    async with db.write() as s, s.begin():
        b = await credits.hold(s, account_id=account, amount=10, idempotency_key="k", ttl_s=60)
        assert b == a
        assert await credits.balance(s, account_id=account) == credits.Balance(90, 10)
    with pytest.raises(Conflict, match="different hold"):
        async with db.write() as s, s.begin():
            await credits.hold(s, account_id=account, amount=11, idempotency_key="k", ttl_s=60)
    async with db.write() as s, s.begin():
        c1 = await credits.capture(s, hold_id=a.id, amount=4, idempotency_key="cap")
        c2 = await credits.capture(s, hold_id=a.id, amount=4, idempotency_key="cap")
        assert c1 == c2
    with pytest.raises(Conflict, match="already captured"):
        async with db.write() as s, s.begin():
            await credits.capture(s, hold_id=a.id, amount=4, idempotency_key="cap-2")
    await consistent(db)


async def test_over_spend_is_refused_and_nothing_is_written(db: Database) -> None:
    account = await funded(db, 5)
    with pytest.raises(InsufficientCredits, match="only 5 are available"):
        async with db.write() as s, s.begin():
            await credits.hold(s, account_id=account, amount=6, idempotency_key="x", ttl_s=60)
    with pytest.raises(InvalidRequest):
        async with db.write() as s, s.begin():
            await credits.hold(s, account_id=account, amount=0, idempotency_key="y", ttl_s=60)
    async with db.read() as s:
        assert await credits.balance(s, account_id=account) == credits.Balance(5, 0)
    await consistent(db)


async def test_expired_holds_are_released_by_the_sweeper_and_cannot_be_captured(
    db: Database,
) -> None:
    account = await funded(db, 50)
    async with db.write() as s, s.begin():
        h = await credits.hold(s, account_id=account, amount=40, idempotency_key="h", ttl_s=1)
    later = h.expires_at + timedelta(seconds=1)
    with pytest.raises(Conflict, match="expired"):
        async with db.write() as s, s.begin():
            await credits.capture(s, hold_id=h.id, amount=1, idempotency_key="c", now=later)
    async with db.write() as s, s.begin():
        assert await credits.expire_holds(s, now=later) == 1
        assert await credits.expire_holds(s, now=later) == 0
        assert await credits.balance(s, account_id=account) == credits.Balance(50, 0)
        status = await s.scalar(select(tables.Hold.status).where(tables.Hold.id == h.id))
        assert status == "released"
    await consistent(db)


async def test_grant_is_audited_and_payout_moves_revenue(db: Database) -> None:
    account = await funded(db, 0)
    async with db.write() as s, s.begin():
        await credits.grant(
            s, account_id=account, amount=25, idempotency_key="g", actor=ADDRESS, reason="beta"
        )
        await credits.payout(s, node="remes1node", amount=3, idempotency_key="p1")
    async with db.read() as s:
        audit = (await s.scalars(select(tables.AdminAudit))).all()
        assert [(a.action, a.actor) for a in audit] == [("grant", ADDRESS)]
        assert await credits.balance(s, account_id=account) == credits.Balance(25, 0)
    await consistent(db)


async def test_concurrent_holds_never_overspend(db: Database) -> None:
    """200 concurrent hold + capture sequences against credit for 50: never below zero."""
    price = 10
    account = await funded(db, 50 * price)
    outcomes: list[str] = []

    async def one(i: int) -> None:
        try:
            async with db.write() as s, s.begin():
                h = await credits.hold(
                    s, account_id=account, amount=price, idempotency_key=f"h{i}", ttl_s=60
                )
            async with db.write() as s, s.begin():
                await credits.capture(s, hold_id=h.id, amount=price, idempotency_key=f"c{i}")
            outcomes.append("ok")
        except InsufficientCredits:
            outcomes.append("402")

    await asyncio.gather(*(one(i) for i in range(200)))
    assert outcomes.count("ok") == 50
    async with db.read() as s:
        assert await credits.balance(s, account_id=account) == credits.Balance(0, 0)
        captured = await s.scalar(
            select(tables.Hold.captured).where(tables.Hold.status == "captured").limit(1)
        )
        assert captured == price
    await consistent(db)


async def test_a_refused_hold_leaves_nothing_even_if_the_caller_commits(db: Database) -> None:
    account = await funded(db, 5)
    async with db.write() as s, s.begin():
        with pytest.raises(InsufficientCredits):
            await credits.hold(s, account_id=account, amount=9, idempotency_key="x", ttl_s=60)
        # The caller goes on in the same transaction and commits; the key is still free.
        ok = await credits.hold(s, account_id=account, amount=5, idempotency_key="x", ttl_s=60)
    async with db.read() as s:
        assert await credits.balance(s, account_id=account) == credits.Balance(0, 5)
        holds = (await s.scalars(select(tables.Hold.id))).all()
        assert holds == [ok.id]
    await consistent(db)


async def test_concurrent_retries_with_one_key_hold_once(db: Database) -> None:
    """Ten copies of one request racing (a client retrying on timeouts): one hold, one result."""
    account = await funded(db, 100)

    async def attempt() -> int | str:
        try:
            async with db.write() as s, s.begin():
                made = await credits.hold(
                    s, account_id=account, amount=30, idempotency_key="same", ttl_s=60
                )
            return made.id
        except Conflict:
            return "retry"  # the first copy had not committed yet: a retry returns its result

    results = await asyncio.gather(*(attempt() for _ in range(10)))
    ids = {r for r in results if r != "retry"}
    assert len(ids) == 1
    async with db.write() as s, s.begin():
        again = await credits.hold(
            s, account_id=account, amount=30, idempotency_key="same", ttl_s=60
        )
        assert {again.id} == ids
        assert await credits.balance(s, account_id=account) == credits.Balance(70, 30)
    await consistent(db)
