"""The spending path of the credit ledger: hold, capture, release (synchronous core).

Each function runs the statements of one operation on a SQLAlchemy `Connection` inside the
caller's transaction and returns plain values, so a whole chat transaction (claim + hold,
or capture + the request's row) is one call: on SQLite, one job of the group-commit writer
(`db/writer.py`) on the database's thread; elsewhere, `credits.hold` / `capture` / `release`
run them in an `AsyncSession`'s transaction. The rules (what moves between which books) are
those of `services/credits.py`'s docstring:

    hold      available -> held                     (InsufficientCredits if not enough)
    capture   held -> system:revenue (+ the rest back to available)
    release   held -> available

Never over-spend: a hold takes credits with one guarded `UPDATE accounts SET available =
available - n ... WHERE available >= n` (the database serialises racing writers on the row;
the CHECK constraint backs it). A hold is closed exactly once by a guarded UPDATE of its
status. Every operation writes one balanced journal transaction under its idempotency key.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Insert, Update, bindparam, delete, insert, select, update

from r3mes.backend.db import accounts as tables
from r3mes.backend.db.base import table_of
from r3mes.backend.errors import Conflict, InsufficientCredits, InvalidRequest, NotFound
from r3mes.backend.services import journal
from r3mes.backend.services.journal import AVAILABLE, HELD

REVENUE = "system:revenue"


@dataclass(frozen=True)
class Hold:
    id: int
    account_id: int
    amount: int
    expires_at: datetime


@dataclass(frozen=True)
class Capture:
    hold_id: int
    amount: int
    """Credits charged (moved to revenue)."""
    released: int
    """The rest of the hold, returned to available."""
    journal_id: int


@dataclass(frozen=True)
class Movement:
    """The result of deposit, release, refund, grant and payout."""

    journal_id: int
    kind: str
    account_id: int | None
    amount: int


@dataclass(frozen=True)
class _HoldRow:
    id: int
    account_id: int
    amount: int
    status: str
    expires_at: datetime


@dataclass(frozen=True)
class _Sql:
    """The hot path's statements, built once and executed with parameters (building a
    SQLAlchemy statement per call cost more CPU than SQLite's work for it)."""

    insert_hold: Insert
    take: Update
    close_captured: Update
    settle_account: Update


@functools.cache
def _sql() -> _Sql:
    h, a = table_of(tables.Hold), table_of(tables.Account)
    return _Sql(
        insert_hold=insert(h).returning(h.c.id),
        # the guarded spend: the row only moves if the credits are there
        take=update(a)
        .where(a.c.id == bindparam("b_id"), a.c.available >= bindparam("b_amount"))
        .values(
            available=a.c.available - bindparam("b_amount"),
            held=a.c.held + bindparam("b_amount"),
        ),
        # a hold is closed once: only while open, unexpired and big enough
        close_captured=update(h)
        .where(
            h.c.id == bindparam("b_id"),
            h.c.status == "open",
            h.c.expires_at > bindparam("b_now"),
            h.c.amount >= bindparam("b_amount"),
        )
        .values(status="captured", captured=bindparam("b_captured"), settled_at=bindparam("b_at"))
        .returning(h.c.account_id, h.c.amount),
        settle_account=update(a)
        .where(a.c.id == bindparam("b_id"))
        .values(held=a.c.held - bindparam("b_held"), available=a.c.available + bindparam("b_rest")),
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def positive(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidRequest("amount must be a positive integer of credits")


def hold_in(
    conn: Connection,
    *,
    account_id: int,
    amount: int,
    idempotency_key: str,
    ttl_s: float,
    ref: str = "",
    now: datetime | None = None,
) -> Hold:
    """Reserve `amount` credits until captured, released, or `ttl_s` passes.

    Four statements: the hold row, its journal transaction (claimed by key), the two legs,
    and the account's guarded UPDATE last, so its row lock (PostgreSQL) is held only from
    that UPDATE to the commit: concurrent spenders of one account queue on it briefly.
    """
    positive(amount)
    journal.check_key(idempotency_key)
    if ttl_s <= 0:
        raise InvalidRequest("a hold needs a positive time to live")
    now = now or utcnow()
    body = {"account_id": account_id, "amount": amount, "ttl_s": ttl_s, "ref": ref}
    expires = now + timedelta(seconds=ttl_s)
    sql = _sql()
    hold_id = conn.scalar(
        sql.insert_hold,
        {
            "account_id": account_id,
            "amount": amount,
            "status": "open",
            "ref": ref[:200],
            "created_at": now,
            "expires_at": expires,
            "captured": 0,
        },
    )
    assert hold_id is not None
    journal_id = journal.claim_in(
        conn,
        scope=str(account_id),
        key=idempotency_key,
        kind="hold",
        body=body,
        account_id=account_id,
        amount=amount,
        hold_id=hold_id,
        ref=ref,
        now=now,
    )
    if journal_id is None:  # a retry: undo our row, answer the first result
        conn.execute(delete(tables.Hold).where(tables.Hold.id == hold_id))
        first = journal.first_result_in(conn, str(account_id), idempotency_key, "hold", body)
        assert first is not None and first.hold_id is not None
        earlier = _hold_row(conn, first.hold_id)
        return Hold(earlier.id, earlier.account_id, earlier.amount, earlier.expires_at)
    journal.entries_in(
        conn, journal_id, [(account_id, AVAILABLE, -amount), (account_id, HELD, amount)]
    )
    moved = conn.execute(sql.take, {"b_id": account_id, "b_amount": amount})
    if moved.rowcount != 1:
        _undo(conn, journal_id=journal_id, hold_id=hold_id)
        have = conn.scalar(select(tables.Account.available).where(tables.Account.id == account_id))
        if have is None:
            raise NotFound(f"account {account_id} does not exist")
        raise InsufficientCredits(
            f"this request needs {amount} credits but only {have} are available; "
            "deposit credits on the ledger to your account's deposit address"
        )
    return Hold(hold_id, account_id, amount, expires)


def capture_in(
    conn: Connection,
    *,
    hold_id: int,
    amount: int,
    idempotency_key: str,
    node: str | None = None,
    ref: str = "",
    now: datetime | None = None,
) -> Capture:
    """Charge `amount` (<= the hold) to revenue for `node`; the rest goes back to available.

    The hold is closed first by a guarded UPDATE (only one capture or release can win),
    the account row last (see `hold_in`).
    """
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise InvalidRequest("capture amount must be a non-negative integer of credits")
    journal.check_key(idempotency_key)
    now = now or utcnow()
    body = {"hold_id": hold_id, "amount": amount, "node": node, "ref": ref}
    sql = _sql()
    closed = conn.execute(
        sql.close_captured,
        {"b_id": hold_id, "b_now": now, "b_amount": amount, "b_captured": amount, "b_at": now},
    ).one_or_none()
    if closed is None:
        return _capture_refused(conn, hold_id, amount, idempotency_key, body, now)
    account_id, held = int(closed.account_id), int(closed.amount)
    rest = held - amount
    journal_id = journal.claim_in(
        conn,
        scope=str(account_id),
        key=idempotency_key,
        kind="capture",
        body=body,
        account_id=account_id,
        amount=amount,
        hold_id=hold_id,
        node=node,
        ref=ref,
        now=now,
    )
    if journal_id is None:
        raise Conflict(
            f"idempotency key {idempotency_key!r} was already used for another request; "
            "use a new key for a new request"
        )
    journal.entries_in(
        conn,
        journal_id,
        [(account_id, HELD, -held), (None, REVENUE, amount), (account_id, AVAILABLE, rest)],
    )
    conn.execute(sql.settle_account, {"b_id": account_id, "b_held": held, "b_rest": rest})
    return Capture(hold_id, amount, rest, journal_id)


def release_in(
    conn: Connection,
    *,
    hold_id: int,
    idempotency_key: str,
    ref: str = "",
    now: datetime | None = None,
) -> Movement:
    """Give a hold's credits back to available (nothing charged)."""
    found = _hold_row(conn, hold_id)
    body = {"hold_id": hold_id}
    first = journal.first_result_in(conn, str(found.account_id), idempotency_key, "release", body)
    if first is not None:
        return Movement(first.id, "release", found.account_id, first.amount)
    now = now or utcnow()
    _settle(conn, found, status="released", captured=0, now=now, allow_expired=True)
    journal_id = journal.write_in(
        conn,
        scope=str(found.account_id),
        key=idempotency_key,
        kind="release",
        body=body,
        account_id=found.account_id,
        amount=found.amount,
        legs=[(found.account_id, HELD, -found.amount), (found.account_id, AVAILABLE, found.amount)],
        hold_id=hold_id,
        ref=ref,
        now=now,
    )
    return Movement(journal_id, "release", found.account_id, found.amount)


def _capture_refused(
    conn: Connection,
    hold_id: int,
    amount: int,
    key: str,
    body: dict[str, Any],
    now: datetime,
) -> Capture:
    """Why a capture's guarded UPDATE matched nothing: a retry (first result) or an error."""
    found = _hold_row(conn, hold_id)
    first = journal.first_result_in(conn, str(found.account_id), key, "capture", body)
    if first is not None:
        return Capture(hold_id, first.amount, found.amount - first.amount, first.id)
    if found.status != "open":
        raise Conflict(f"hold {hold_id} was already {found.status}")
    if found.expires_at <= now:
        raise Conflict(f"hold {hold_id} expired; its credits are being released")
    raise InvalidRequest(f"cannot capture {amount} credits from a hold of {found.amount}")


def _hold_row(conn: Connection, hold_id: int) -> _HoldRow:
    h = tables.Hold
    found = conn.execute(
        select(h.id, h.account_id, h.amount, h.status, h.expires_at).where(h.id == hold_id)
    ).one_or_none()
    if found is None:
        raise NotFound(f"hold {hold_id} does not exist")
    return _HoldRow(
        int(found.id), int(found.account_id), int(found.amount), found.status, found.expires_at
    )


def _settle(
    conn: Connection,
    found: _HoldRow,
    *,
    status: str,
    captured: int,
    now: datetime,
    allow_expired: bool,
) -> None:
    """Close an open hold exactly once (guarded UPDATE) and move its credits out of held."""
    guard = [tables.Hold.id == found.id, tables.Hold.status == "open"]
    if not allow_expired:
        guard.append(tables.Hold.expires_at > now)
    closed = conn.execute(
        update(tables.Hold).where(*guard).values(status=status, captured=captured, settled_at=now)
    )
    if closed.rowcount != 1:
        current = conn.scalar(select(tables.Hold.status).where(tables.Hold.id == found.id))
        if current == "open":
            raise Conflict(f"hold {found.id} expired; its credits are being released")
        raise Conflict(f"hold {found.id} was already {current}")
    rest = found.amount - captured
    conn.execute(
        update(tables.Account)
        .where(tables.Account.id == found.account_id)
        .values(
            held=tables.Account.held - found.amount,
            available=tables.Account.available + rest,
        )
    )


def _undo(conn: Connection, *, journal_id: int, hold_id: int) -> None:
    """Remove what a refused hold wrote, so the transaction stays consistent if the caller
    goes on (the journal never shows a movement that did not happen)."""
    conn.execute(
        delete(tables.JournalEntry).where(tables.JournalEntry.transaction_id == journal_id)
    )
    conn.execute(
        delete(tables.JournalTransaction).where(tables.JournalTransaction.id == journal_id)
    )
    conn.execute(delete(tables.Hold).where(tables.Hold.id == hold_id))
