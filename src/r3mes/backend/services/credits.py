"""The credit ledger: double-entry movements of integer credits, idempotent by key.

Every operation takes an `AsyncSession` inside the caller's transaction
(`async with runtime.db.write() as s, s.begin(): ...`) and writes one balanced journal
transaction (its entries sum to zero) plus the account balance change, so they commit or
roll back together. Books:

    user     available   spendable credits            (accounts.available, CHECK >= 0)
    user     held        reserved for open holds      (accounts.held, CHECK >= 0)
    system:deposits      source of ledger deposits    (negative: what users brought in)
    system:revenue       captured spend, less refunds and payouts
    system:grants        source of admin grants
    system:payouts       paid out to serving-node operators

    deposit   system:deposits -> available
    hold      available -> held                     (InsufficientCredits if not enough)
    capture   held -> system:revenue (+ the rest back to available)
    release   held -> available                     (also what the expiry sweeper does)
    refund    system:revenue -> available
    grant     system:grants -> available            (admin; audited)
    payout    system:revenue -> system:payouts

Spending is one guarded `UPDATE accounts SET available = available - n ... WHERE
available >= n`: the database serialises racing writers on the row, so concurrent holds can
never take an account below zero (and the CHECK constraint backs it). Each operation carries
an idempotency key, unique per account (`scope`): a retry with the same body returns the
first result; the same key with a different body raises Conflict.

hold, capture and release are implemented synchronously on a `Connection` in
`services/holds.py` (the paid chat path runs them as one job each through
`Database.transact`, group-committed on SQLite); the functions here run them inside an
`AsyncSession`'s transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db import accounts as tables
from r3mes.backend.db.engine import Database
from r3mes.backend.errors import Conflict, InvalidRequest, NotFound
from r3mes.backend.services import holds, journal
from r3mes.backend.services.holds import Capture, Hold, Movement, positive, utcnow
from r3mes.backend.services.journal import AVAILABLE, book_mismatches, journal_imbalance

log = logging.getLogger(__name__)

__all__ = [
    "Balance",
    "Capture",
    "Hold",
    "Movement",
    "balance",
    "book_mismatches",
    "capture",
    "deposit",
    "ensure_account",
    "expire_holds",
    "grant",
    "hold",
    "journal_imbalance",
    "payout",
    "refund",
    "release",
    "set_admin",
    "sweep_forever",
    "utcnow",
]

SYSTEM_SCOPE = "system"
DEPOSITS, REVENUE, GRANTS, PAYOUTS = (
    "system:deposits",
    "system:revenue",
    "system:grants",
    "system:payouts",
)


@dataclass(frozen=True)
class Balance:
    available: int
    """Spendable now."""
    held: int
    """Reserved by open holds (captured or released later)."""


# -- accounts -----------------------------------------------------------------------------


async def ensure_account(s: AsyncSession, *, address: str, now: datetime | None = None) -> int:
    """The id of `address`'s account, created (with zero credits) on first sight."""
    found = await s.scalar(select(tables.Account.id).where(tables.Account.address == address))
    if found is not None:
        return int(found)
    try:
        async with s.begin_nested():
            account = tables.Account(
                address=address,
                tier="default",
                is_admin=False,
                available=0,
                held=0,
                created_at=now or utcnow(),
            )
            s.add(account)
            await s.flush()
            return int(account.id)
    except IntegrityError:
        # Another request created it between our SELECT and INSERT.
        again = await s.scalar(select(tables.Account.id).where(tables.Account.address == address))
        if again is None:
            raise
        return int(again)


async def balance(s: AsyncSession, *, account_id: int) -> Balance:
    row = (
        await s.execute(
            select(tables.Account.available, tables.Account.held).where(
                tables.Account.id == account_id
            )
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return Balance(available=int(row.available), held=int(row.held))


# -- operations ---------------------------------------------------------------------------


async def hold(
    s: AsyncSession,
    *,
    account_id: int,
    amount: int,
    idempotency_key: str,
    ttl_s: float,
    ref: str = "",
    now: datetime | None = None,
) -> Hold:
    """Reserve `amount` credits until captured, released, or `ttl_s` passes (`holds.hold_in`
    inside the session's transaction)."""
    return await journal.in_session(
        s,
        lambda conn: holds.hold_in(
            conn,
            account_id=account_id,
            amount=amount,
            idempotency_key=idempotency_key,
            ttl_s=ttl_s,
            ref=ref,
            now=now,
        ),
    )


async def capture(
    s: AsyncSession,
    *,
    hold_id: int,
    amount: int,
    idempotency_key: str,
    node: str | None = None,
    ref: str = "",
    now: datetime | None = None,
) -> Capture:
    """Charge `amount` (<= the hold) to revenue for `node`; the rest goes back to available
    (`holds.capture_in` inside the session's transaction)."""
    return await journal.in_session(
        s,
        lambda conn: holds.capture_in(
            conn,
            hold_id=hold_id,
            amount=amount,
            idempotency_key=idempotency_key,
            node=node,
            ref=ref,
            now=now,
        ),
    )


async def release(
    s: AsyncSession,
    *,
    hold_id: int,
    idempotency_key: str,
    ref: str = "",
    now: datetime | None = None,
) -> Movement:
    """Give a hold's credits back to available (`holds.release_in`)."""
    return await journal.in_session(
        s,
        lambda conn: holds.release_in(
            conn, hold_id=hold_id, idempotency_key=idempotency_key, ref=ref, now=now
        ),
    )


async def deposit(
    s: AsyncSession,
    *,
    account_id: int,
    amount: int,
    idempotency_key: str,
    ref: str = "",
    now: datetime | None = None,
) -> Movement:
    """Credits that arrived from outside (a ledger transfer to the deposit address)."""
    return await _credit(s, "deposit", DEPOSITS, account_id, amount, idempotency_key, ref, now)


async def refund(
    s: AsyncSession,
    *,
    account_id: int,
    amount: int,
    idempotency_key: str,
    ref: str = "",
    now: datetime | None = None,
) -> Movement:
    """Give back credits that were captured (a failed or cancelled request)."""
    return await _credit(s, "refund", REVENUE, account_id, amount, idempotency_key, ref, now)


async def grant(
    s: AsyncSession,
    *,
    account_id: int,
    amount: int,
    idempotency_key: str,
    actor: str,
    reason: str = "",
    now: datetime | None = None,
) -> Movement:
    """Credits an admin gives; recorded in the journal and the admin audit log."""
    now = now or utcnow()
    moved = await _credit(
        s, "grant", GRANTS, account_id, amount, idempotency_key, reason, now, actor=actor
    )
    s.add(
        tables.AdminAudit(
            actor=actor,
            action="grant",
            target=f"account:{account_id}",
            detail=json.dumps({"amount": amount, "reason": reason, "journal": moved.journal_id}),
            created_at=now,
        )
    )
    return moved


async def payout(
    s: AsyncSession,
    *,
    node: str,
    amount: int,
    idempotency_key: str,
    ref: str = "",
    now: datetime | None = None,
) -> Movement:
    """Revenue paid out to serving-node operator `node` (idempotency scope: the system)."""
    positive(amount)
    body = {"node": node, "amount": amount, "ref": ref}
    first = await journal.first_result(s, SYSTEM_SCOPE, idempotency_key, "payout", body)
    if first is not None:
        return Movement(first.id, "payout", None, first.amount)
    journal_id = await journal.write(
        s,
        scope=SYSTEM_SCOPE,
        key=idempotency_key,
        kind="payout",
        body=body,
        account_id=None,
        amount=amount,
        legs=[(None, REVENUE, -amount), (None, PAYOUTS, amount)],
        node=node,
        ref=ref,
        now=now or utcnow(),
    )
    return Movement(journal_id, "payout", None, amount)


async def expire_holds(s: AsyncSession, *, now: datetime | None = None, limit: int = 200) -> int:
    """Release every open hold past its deadline (the sweeper); returns how many."""
    now = now or utcnow()
    due = (
        await s.scalars(
            select(tables.Hold.id)
            .where(tables.Hold.status == "open", tables.Hold.expires_at <= now)
            .order_by(tables.Hold.expires_at)
            .limit(limit)
        )
    ).all()
    released = 0
    for hold_id in due:
        try:
            await release(s, hold_id=hold_id, idempotency_key=f"expire:{hold_id}", now=now)
        except Conflict:
            continue  # captured or released by someone else since the SELECT
        released += 1
    return released


# -- internals ----------------------------------------------------------------------------


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0))


async def _credit(
    s: AsyncSession,
    kind: str,
    source: str,
    account_id: int,
    amount: int,
    key: str,
    ref: str,
    now: datetime | None,
    *,
    actor: str | None = None,
) -> Movement:
    positive(amount)
    body = {"account_id": account_id, "amount": amount, "ref": ref}
    first = await journal.first_result(s, str(account_id), key, kind, body)
    if first is not None:
        return Movement(first.id, kind, account_id, first.amount)
    moved = await s.execute(
        update(tables.Account)
        .where(tables.Account.id == account_id)
        .values(available=tables.Account.available + amount)
    )
    if _rowcount(moved) != 1:
        raise NotFound(f"account {account_id} does not exist")
    journal_id = await journal.write(
        s,
        scope=str(account_id),
        key=key,
        kind=kind,
        body=body,
        account_id=account_id,
        amount=amount,
        legs=[(None, source, -amount), (account_id, AVAILABLE, amount)],
        ref=ref,
        actor=actor,
        now=now or utcnow(),
    )
    return Movement(journal_id, kind, account_id, amount)


async def sweep_forever(db: Database, *, interval_s: float) -> None:
    """The hold-expiry worker: release overdue holds every `interval_s` seconds."""
    while True:
        try:
            async with db.write() as s, s.begin():
                released = await expire_holds(s)
            if released:
                log.info("released %d expired credit holds", released)
        except Exception:
            log.exception("hold sweeper failed; retrying")
        await asyncio.sleep(interval_s)


def sweep_interval(hold_ttl_s: float) -> float:
    """Sweep often enough that a hold outlives its deadline by at most ~1/5 of its TTL."""
    return max(0.5, min(10.0, hold_ttl_s / 5))


async def set_admin(s: AsyncSession, *, address: str, admin: bool, actor: str) -> int:
    """Grant or take admin rights of `address` (its account is created if new); audited."""
    from r3mes.chain.crypto import validate_address
    from r3mes.chain.errors import AddressError

    try:
        address = validate_address(address)
    except AddressError as exc:
        raise InvalidRequest(str(exc)) from exc
    account_id = await ensure_account(s, address=address)
    await s.execute(
        update(tables.Account).where(tables.Account.id == account_id).values(is_admin=admin)
    )
    s.add(
        tables.AdminAudit(
            actor=actor,
            action="admin" if admin else "unadmin",
            target=f"account:{account_id}",
            detail=json.dumps({"address": address}),
            created_at=utcnow(),
        )
    )
    return account_id
