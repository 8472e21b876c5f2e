"""SQLite's one writer, shared: group commit of the hot ledger transactions.

SQLite lets one connection write at a time. Through aiosqlite every statement of a
transaction is a round trip to a thread while the write lock is held, so a chat request's
credit hold (six statements with BEGIN and COMMIT) kept every other request waiting for
six thread hops, and throughput was bound by `1 / (statements x hop)`.

`GroupWriter` owns one plain `sqlite3` connection on one thread. A caller hands it a *job*,
a synchronous function of a SQLAlchemy `Connection` that runs the statements of one logical
transaction, and awaits the job's own result. Jobs that arrive while a batch is running are
run together as the next batch: one `BEGIN IMMEDIATE`, each job inside its own SAVEPOINT
(a job that raises is rolled back alone and its caller gets the exception), one `COMMIT`.
A batch of one job runs without a savepoint (its failure rolls back the transaction): a
SAVEPOINT and its RELEASE took a third of the CPU of two lone chat transactions.
A caller's result is delivered only after that COMMIT returned, so what a job wrote is
durable when its caller goes on (a credit hold is committed before the request is
forwarded). If BEGIN or COMMIT fails, nothing of the batch was written and every caller in
it gets the error.

A job whose caller was cancelled before its batch started is skipped; one cancelled while
its batch runs still commits (a hold nobody captures is released by the expiry sweeper).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[Connection], T]

MAX_BATCH = 128
"""Jobs per transaction at most (bounds how long one COMMIT keeps the others waiting)."""


@dataclass
class _Pending(Generic[T]):
    job: Job[T]
    future: asyncio.Future[T]


@dataclass(frozen=True)
class _Outcome:
    value: Any = None
    error: BaseException | None = None


class GroupWriter:
    """One thread and one connection that run write jobs in group-committed batches."""

    def __init__(self, sync_url: str, *, configure: Callable[[Any], None]) -> None:
        """`sync_url`: a `sqlite://` URL of the same file the async engines open;
        `configure(dbapi_connection)`: the pragmas every backend connection gets."""
        self._url = sync_url
        self._configure = configure
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r3mes-sqlite-w")
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._pending: list[_Pending[Any]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, job: Job[T]) -> T:
        """Run `job` in the next batch; its return value once the batch has committed."""
        if self._closed:
            raise RuntimeError("the database writer is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(job, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="r3mes-sqlite-writer")
        return await future

    async def close(self) -> None:
        """Finish the queued jobs, then close the connection and the thread."""
        self._closed = True
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_connection)
        self._executor.shutdown(wait=True)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = [p for p in self._pending[:MAX_BATCH] if not p.future.done()]
            del self._pending[:MAX_BATCH]
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self._commit, [p.job for p in batch]
                )
            except BaseException as exc:  # cancelled: the loop is closing
                stopped = RuntimeError(f"the database writer stopped: {exc!r}")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(stopped)
                raise
            for p, outcome in zip(batch, outcomes, strict=True):
                if p.future.done():
                    continue
                if outcome.error is not None:
                    p.future.set_exception(outcome.error)
                else:
                    p.future.set_result(outcome.value)

    # -- the writer thread --------------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            if self._engine is None:
                self._engine = _engine(self._url, self._configure)
            self._conn = self._engine.connect()
        return self._conn

    def _commit(self, jobs: list[Job[Any]]) -> list[_Outcome]:
        """One transaction: every job in its own savepoint, then one COMMIT."""
        outcomes: list[_Outcome] = []
        try:
            conn = self._connection()
            if len(jobs) == 1:
                # alone in its transaction: the rollback of a failing job is the
                # transaction's own (the except below), no savepoint needed
                with conn.begin():
                    return [_Outcome(value=jobs[0](conn))]
            with conn.begin():
                for job in jobs:
                    savepoint = conn.begin_nested()
                    try:
                        value = job(conn)
                    except Exception as exc:
                        savepoint.rollback()
                        outcomes.append(_Outcome(error=exc))
                    else:
                        savepoint.commit()
                        outcomes.append(_Outcome(value=value))
        except Exception as exc:
            # BEGIN, a savepoint rollback or COMMIT failed: nothing of this batch is written.
            if self._conn is not None and self._conn.invalidated:
                self._conn = None
            return [_Outcome(error=exc) for _ in jobs]
        return outcomes

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _engine(url: str, configure: Callable[[Any], None]) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        configure(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
