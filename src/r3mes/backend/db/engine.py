"""Async engines and sessions for SQLite (embedded, WAL) and PostgreSQL.

`Database` holds two session factories:

- `write()`: transactions that change state. On SQLite they start with `BEGIN IMMEDIATE`,
  so two writers queue on the busy timeout instead of failing when a read lock is upgraded
  (SQLite's "database is locked" under concurrency). On PostgreSQL it is a normal session;
  rules that need row locks take them (`SELECT ... FOR UPDATE`) or use atomic `UPDATE`s.
- `read()`: read-only work. On SQLite a separate engine with deferred transactions, so
  readers never wait behind the writer (WAL). On PostgreSQL the same engine.
- `transact(job)`: the hot path's short write transactions (the chat request's credit hold
  and its settlement), given as a synchronous `job(connection)`. On SQLite they go to the
  group-commit writer (`db/writer.py`: one thread, one connection, concurrent jobs share a
  transaction and a COMMIT, one thread hop per batch instead of one per statement); on
  PostgreSQL each runs in its own transaction of a pooled session, and jobs given the same
  `key` (the account whose balance row they update) run one at a time in this process
  (`serial(key)`, which the credit routes use too). They would wait for that row's lock
  anyway; waiting in the process holds no pooled connection.
  (Before, 200 concurrent requests of one account took every connection, each waiting for
  the row lock, and the other requests failed on the pool's timeout.)
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from r3mes.backend.db.writer import GroupWriter
from r3mes.backend.errors import ConfigError
from r3mes.backend.settings import BackendSettings

SQLITE_BUSY_TIMEOUT_MS = 30_000
T = TypeVar("T")


class Database:
    """The backend's engines and session factories (see the module docstring)."""

    def __init__(self, settings: BackendSettings) -> None:
        self.url = settings.sqlalchemy_url
        self.is_sqlite = settings.is_sqlite
        if self.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.engine = _sqlite_engine(self.url, immediate=True)
            self.read_engine = _sqlite_engine(self.url, immediate=False)
        elif self.url.startswith("postgresql+asyncpg://"):
            self.engine = create_async_engine(
                self.url,
                pool_size=20,
                max_overflow=20,
                pool_pre_ping=True,
                pool_timeout=10,
                # a new server connection forks a PostgreSQL backend process: on a loaded
                # machine that took over 10 s (CI); a stuck server still fails in 30 s
                connect_args={"timeout": 30, "command_timeout": 30},
            )
            self.read_engine = self.engine
        else:
            raise ConfigError(
                f"unsupported database URL scheme {self.url.split('://', 1)[0]!r}: use "
                "postgresql://... or leave R3MES_DATABASE_URL empty for SQLite in $R3MES_HOME"
            )
        self.write = async_sessionmaker(self.engine, expire_on_commit=False)
        self.read = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._writer: GroupWriter | None = None
        self._serial: weakref.WeakValueDictionary[object, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def transact(self, job: Callable[[Connection], T], *, key: object = None) -> T:
        """Run `job` in a write transaction; its result once that transaction committed.
        Jobs with the same `key` (not None) never run at the same time in this process."""
        if self.is_sqlite:
            if self._writer is None:
                sync_url = self.url.replace("sqlite+aiosqlite://", "sqlite+pysqlite://", 1)
                self._writer = GroupWriter(sync_url, configure=_configure_sqlite)
            return await self._writer.run(job)
        async with self.serial(key), self.write() as s, s.begin():
            return await s.run_sync(lambda session: job(session.connection()))

    @asynccontextmanager
    async def serial(self, key: object) -> AsyncIterator[None]:
        """Hold this process's turn for `key` (an account id) on PostgreSQL: write
        transactions that update one account's balance row queue here, before they take a
        pooled connection (see the module docstring). Nothing on SQLite, or for key None."""
        if self.is_sqlite or key is None:
            yield
            return
        lock = self._serial.get(key)
        if lock is None:
            lock = self._serial[key] = asyncio.Lock()
        async with lock:
            yield

    async def dispose(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    sync = engine.sync_engine

    @event.listens_for(sync, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        _configure_sqlite(dbapi_connection)

    @event.listens_for(sync, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _configure_sqlite(dbapi_connection: Any) -> None:
    """What every connection to the backend's SQLite file gets (async engines and writer)."""
    # Take transaction control from the driver so BEGIN is ours (SQLAlchemy's recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
