"""The journal underneath the credit ledger: balanced, idempotent writes and their audit.

A journal transaction is one row in `journal_transactions`, unique by `(scope,
idempotency_key)`, with the request's hash so a retry can be told from a different request
under the same key; its legs are `journal_entries` rows whose amounts sum to zero. The rules
of what each operation moves live in `services/credits.py`; this module only writes and
checks the journal.

Writers are synchronous functions of a SQLAlchemy `Connection` (`..._in`), so one
transaction's statements can run in one call on the database's thread (the group-commit
writer, `db/writer.py`); the async names run them inside an `AsyncSession`'s transaction.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Insert, func, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from r3mes.backend.db import accounts as tables
from r3mes.backend.db.base import table_of
from r3mes.backend.errors import Conflict, InvalidRequest

MAX_KEY_LENGTH = 200
AVAILABLE, HELD = "available", "held"
"""A user account's two books (balances kept on `accounts`)."""

Leg = tuple[int | None, str, int]
"""(account id or None for a system book, book name, signed amount)."""
T = TypeVar("T")


async def journal_imbalance(s: AsyncSession) -> int:
    """Sum of every journal entry: 0 in a consistent ledger."""
    total = await s.scalar(select(func.coalesce(func.sum(tables.JournalEntry.amount), 0)))
    return int(total or 0)


async def book_mismatches(s: AsyncSession) -> list[str]:
    """Accounts whose stored balances differ from the sum of their journal entries."""
    sums = {
        (int(r.account_id), str(r.book)): int(r.total)
        for r in await s.execute(
            select(
                tables.JournalEntry.account_id,
                tables.JournalEntry.book,
                func.sum(tables.JournalEntry.amount).label("total"),
            )
            .where(tables.JournalEntry.account_id.is_not(None))
            .group_by(tables.JournalEntry.account_id, tables.JournalEntry.book)
        )
    }
    problems = []
    for account in await s.scalars(select(tables.Account)):
        for book, stored in ((AVAILABLE, account.available), (HELD, account.held)):
            journal = sums.get((account.id, book), 0)
            if journal != stored:
                problems.append(f"account {account.id} {book}: stored {stored}, journal {journal}")
    return problems


def check_key(key: str) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"idempotency key must be 1..{MAX_KEY_LENGTH} characters")


def request_hash(kind: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"op": kind, **body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Recorded:
    """A journal transaction an earlier call wrote under an idempotency key."""

    id: int
    kind: str
    amount: int
    hold_id: int | None


async def in_session(s: AsyncSession, fn: Callable[[Connection], T]) -> T:
    """Run the synchronous `fn` on the session's connection, inside its transaction (what
    the session holds is flushed first, as an ORM statement would have)."""

    def run(session: Session) -> T:
        session.flush()
        return fn(session.connection())

    return await s.run_sync(run)


def first_result_in(
    conn: Connection, scope: str, key: str, kind: str, body: dict[str, Any]
) -> Recorded | None:
    """The journal transaction an earlier call with this key wrote, if any."""
    check_key(key)
    t = tables.JournalTransaction
    found = conn.execute(
        select(t.id, t.kind, t.request_hash, t.amount, t.hold_id).where(
            t.scope == scope, t.idempotency_key == key
        )
    ).one_or_none()
    if found is None:
        return None
    if found.kind != kind or found.request_hash != request_hash(kind, body):
        raise Conflict(
            f"idempotency key {key!r} was already used for a different {found.kind} request; "
            "use a new key for a new request"
        )
    hold_id = None if found.hold_id is None else int(found.hold_id)
    return Recorded(int(found.id), str(found.kind), int(found.amount), hold_id)


async def first_result(
    s: AsyncSession, scope: str, key: str, kind: str, body: dict[str, Any]
) -> Recorded | None:
    return await in_session(s, lambda conn: first_result_in(conn, scope, key, kind, body))


def write_in(
    conn: Connection,
    *,
    scope: str,
    key: str,
    kind: str,
    body: dict[str, Any],
    account_id: int | None,
    amount: int,
    legs: list[Leg],
    now: datetime,
    hold_id: int | None = None,
    node: str | None = None,
    ref: str = "",
    actor: str | None = None,
) -> int:
    """Write one balanced journal transaction under (scope, key) and return its id.

    Callers look for a first result (`first_result`) before; a key that appears in between
    belongs to a concurrent request: Conflict, and the caller's transaction rolls back.
    """
    journal_id = claim_in(
        conn,
        scope=scope,
        key=key,
        kind=kind,
        body=body,
        account_id=account_id,
        amount=amount,
        now=now,
        hold_id=hold_id,
        node=node,
        ref=ref,
        actor=actor,
    )
    if journal_id is None:
        raise Conflict(f"a request with idempotency key {key!r} is already in progress; retry it")
    entries_in(conn, journal_id, legs)
    return journal_id


async def write(s: AsyncSession, **kwargs: Any) -> int:
    """`write_in` inside the session's transaction."""
    return await in_session(s, lambda conn: write_in(conn, **kwargs))


def claim_in(
    conn: Connection,
    *,
    scope: str,
    key: str,
    kind: str,
    body: dict[str, Any],
    account_id: int | None,
    amount: int,
    now: datetime,
    hold_id: int | None = None,
    node: str | None = None,
    ref: str = "",
    actor: str | None = None,
) -> int | None:
    """Insert the journal transaction for (scope, key); None if that key already has one.

    `INSERT ... ON CONFLICT DO NOTHING` (SQLite and PostgreSQL): one statement in the
    common case, and a concurrent request with the same key waits for the first to commit
    instead of failing.
    """
    values = {
        "scope": scope,
        "idempotency_key": key,
        "request_hash": request_hash(kind, body),
        "kind": kind,
        "account_id": account_id,
        "amount": amount,
        "hold_id": hold_id,
        "node": node,
        "ref": ref[:200],
        "actor": actor,
        "created_at": now,
    }
    found = conn.scalar(_claim_sql(conn.dialect.name), values)
    return None if found is None else int(found)


@functools.cache
def _claim_sql(dialect: str) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING RETURNING id`, built once per dialect."""
    t = table_of(tables.JournalTransaction)
    insert_of = postgresql_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert_of(t)
        .on_conflict_do_nothing(index_elements=["scope", "idempotency_key"])
        .returning(t.c.id)
    )


def entries_in(conn: Connection, journal_id: int, legs: list[Leg]) -> None:
    """The legs of one journal transaction (zero legs skipped), in one INSERT."""
    if sum(amount for _, _, amount in legs) != 0:
        raise AssertionError(f"unbalanced journal {journal_id}: {legs}")
    rows = [
        {"transaction_id": journal_id, "account_id": acc, "book": book, "amount": leg}
        for acc, book, leg in legs
        if leg != 0
    ]
    conn.execute(insert(table_of(tables.JournalEntry)), rows)
