"""The journal underneath the credit ledger: balanced, idempotent writes and their audit.

A journal transaction is one row in `journal_transactions`, unique by `(scope,
idempotency_key)`, with the request's hash so a retry can be told from a different request
under the same key; its legs are `journal_entries` rows whose amounts sum to zero. The rules
of what each operation moves live in `services/credits.py`; this module only writes and
checks the journal.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db import accounts as tables
from r3mes.backend.errors import Conflict, InvalidRequest

MAX_KEY_LENGTH = 200
AVAILABLE, HELD = "available", "held"
"""A user account's two books (balances kept on `accounts`)."""

Leg = tuple[int | None, str, int]
"""(account id or None for a system book, book name, signed amount)."""


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


async def first_result(
    s: AsyncSession, scope: str, key: str, kind: str, body: dict[str, Any]
) -> tables.JournalTransaction | None:
    """The journal transaction an earlier call with this key wrote, if any."""
    check_key(key)
    found = await s.scalar(
        select(tables.JournalTransaction).where(
            tables.JournalTransaction.scope == scope,
            tables.JournalTransaction.idempotency_key == key,
        )
    )
    if found is None:
        return None
    if found.kind != kind or found.request_hash != request_hash(kind, body):
        raise Conflict(
            f"idempotency key {key!r} was already used for a different {found.kind} request; "
            "use a new key for a new request"
        )
    return found


async def write(
    s: AsyncSession,
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
    journal_id = await claim(
        s,
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
    await entries(s, journal_id, legs)
    return journal_id


async def claim(
    s: AsyncSession,
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

    `INSERT ... ON CONFLICT DO NOTHING` (SQLite and PostgreSQL): one round trip in the
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
    dialect = s.get_bind().dialect.name
    statement: Any
    if dialect == "postgresql":
        statement = postgresql_insert(tables.JournalTransaction).values(**values)
    else:
        statement = sqlite_insert(tables.JournalTransaction).values(**values)
    statement = statement.on_conflict_do_nothing(
        index_elements=["scope", "idempotency_key"]
    ).returning(tables.JournalTransaction.id)
    found = await s.scalar(statement)
    return None if found is None else int(found)


async def entries(s: AsyncSession, journal_id: int, legs: list[Leg]) -> None:
    """The legs of one journal transaction (zero legs skipped), in one INSERT."""
    if sum(amount for _, _, amount in legs) != 0:
        raise AssertionError(f"unbalanced journal {journal_id}: {legs}")
    rows = [
        {"transaction_id": journal_id, "account_id": acc, "book": book, "amount": leg}
        for acc, book, leg in legs
        if leg != 0
    ]
    await s.execute(insert(tables.JournalEntry).values(rows))
