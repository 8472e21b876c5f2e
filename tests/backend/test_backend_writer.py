"""`Database.transact` and SQLite's group-commit writer: each caller its own result, a
failing job rolled back alone, results only after COMMIT, no over-spend when many holds of
one account share a transaction."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import Connection, select, text

from r3mes.backend.db import accounts as tables
from r3mes.backend.db.engine import Database
from r3mes.backend.db.migrate import migrate
from r3mes.backend.errors import InsufficientCredits
from r3mes.backend.services import credits, holds
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


async def funded(db: Database, amount: int) -> int:
    async with db.write() as s, s.begin():
        account_id = await credits.ensure_account(s, address=ADDRESS)
        await credits.deposit(s, account_id=account_id, amount=amount, idempotency_key="seed")
    return account_id


async def test_concurrent_holds_of_one_account_never_over_spend(db: Database) -> None:
    """200 holds at once against a balance that covers 20 (on SQLite many in one
    group-committed transaction; on PostgreSQL one at a time per account, so they never hold
    every pooled connection waiting for the balance row's lock): exactly 20 succeed, the
    books stay balanced."""
    account = await funded(db, 20 * 7)

    async def one(i: int) -> holds.Hold | None:
        try:
            return await db.transact(
                lambda conn: holds.hold_in(
                    conn, account_id=account, amount=7, idempotency_key=f"h{i}", ttl_s=60
                ),
                key=account,
            )
        except InsufficientCredits:
            return None

    made = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(h is not None for h in made) == 20
    async with db.read() as s:
        assert await credits.balance(s, account_id=account) == credits.Balance(0, 140)
        assert await credits.journal_imbalance(s) == 0
        assert await credits.book_mismatches(s) == []
        open_holds = await s.scalar(
            select(text("count(*)")).select_from(tables.Hold).where(tables.Hold.status == "open")
        )
    assert open_holds == 20


async def test_jobs_of_one_key_run_one_at_a_time_other_keys_overlap(db: Database) -> None:
    running: dict[str, int] = {"a": 0, "b": 0, "all": 0}
    peak: dict[str, int] = {"a": 0, "b": 0, "all": 0}
    pause = "SELECT 1" if db.is_sqlite else "SELECT pg_sleep(0.02)"

    def job(key: str) -> Callable[[Connection], None]:
        def run(conn: Connection) -> None:
            for k in (key, "all"):
                running[k] += 1
                peak[k] = max(peak[k], running[k])
            conn.execute(text(pause))  # on PostgreSQL the event loop runs others meanwhile
            for k in (key, "all"):
                running[k] -= 1

        return run

    await asyncio.gather(*(db.transact(job(k), key=k) for k in "ab" * 10))
    assert peak["a"] == peak["b"] == 1
    if not db.is_sqlite:
        assert peak["all"] == 2  # one of each key at a time, the two keys side by side


async def test_a_failing_job_is_rolled_back_alone_and_results_follow_the_commit(
    db: Database, settings: BackendSettings
) -> None:
    account = await funded(db, 100)

    def hold(key: str, amount: int) -> Callable[[Connection], int]:
        def job(conn: Connection) -> int:
            return holds.hold_in(
                conn, account_id=account, amount=amount, idempotency_key=key, ttl_s=60
            ).id

        return job

    def broken(conn: Connection) -> int:
        holds.hold_in(conn, account_id=account, amount=5, idempotency_key="broken", ttl_s=60)
        raise ValueError("the job failed after writing")

    results = await asyncio.gather(
        db.transact(hold("a", 10)),
        db.transact(broken),
        db.transact(hold("b", 1000)),
        db.transact(hold("c", 20)),
        return_exceptions=True,
    )
    assert isinstance(results[0], int) and isinstance(results[3], int)
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], InsufficientCredits)
    # what the callers were told is committed: a fresh connection sees exactly that
    fresh = Database(settings)
    try:
        async with fresh.read() as s:
            assert await credits.balance(s, account_id=account) == credits.Balance(70, 30)
            keys = set(await s.scalars(select(tables.JournalTransaction.idempotency_key)))
            assert keys == {"seed", "a", "c"}
            assert await credits.journal_imbalance(s) == 0
    finally:
        await fresh.dispose()


@pytest.mark.parametrize(
    "database_url", ["sqlite"], indirect=True
)  # group commit is SQLite's writer
async def test_sqlite_jobs_that_arrive_during_a_batch_share_the_next_transaction(
    db: Database,
) -> None:
    account = await funded(db, 1000)
    running, go_on = threading.Event(), threading.Event()

    def blocker(conn: Connection) -> object:
        running.set()
        assert go_on.wait(30)
        return conn.get_transaction()

    def job(i: int) -> Callable[[Connection], object]:
        def run(conn: Connection) -> object:
            holds.hold_in(conn, account_id=account, amount=1, idempotency_key=f"j{i}", ttl_s=60)
            return conn.get_transaction()  # kept alive in the results: ids are distinct

        return run

    first = asyncio.ensure_future(db.transact(blocker))
    assert await asyncio.to_thread(running.wait, 30)
    rest = [asyncio.ensure_future(db.transact(job(i))) for i in range(20)]
    await asyncio.sleep(0)
    go_on.set()
    alone = await first
    together = await asyncio.gather(*rest)
    assert len({id(t) for t in together}) == 1  # twenty callers, one BEGIN ... COMMIT
    assert together[0] is not alone
    async with db.read() as s:
        assert await credits.balance(s, account_id=account) == credits.Balance(980, 20)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the queue is SQLite's writer
async def test_a_caller_cancelled_before_its_batch_runs_writes_nothing(db: Database) -> None:
    account = await funded(db, 100)
    running, go_on = threading.Event(), threading.Event()

    def blocker(_conn: Connection) -> None:
        running.set()
        assert go_on.wait(30)

    first = asyncio.ensure_future(db.transact(blocker))
    assert await asyncio.to_thread(running.wait, 30)
    queued = asyncio.ensure_future(
        db.transact(
            lambda conn: holds.hold_in(
                conn, account_id=account, amount=10, idempotency_key="late", ttl_s=60
            )
        )
    )
    await asyncio.sleep(0)
    queued.cancel()
    go_on.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await queued
    await db.transact(lambda conn: None)  # the writer has moved past the cancelled job
    async with db.read() as s:
        assert await credits.balance(s, account_id=account) == credits.Balance(100, 0)
