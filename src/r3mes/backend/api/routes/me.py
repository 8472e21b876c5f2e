"""`/api/me`: the caller's account (balance, holds, ledger tier and reputation) and journal."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import func, select

from r3mes.backend.api.deps import MAX_ROW_ID, ReadPrincipalDep, ReadSessionDep, RuntimeDep
from r3mes.backend.db.accounts import Hold, JournalEntry, JournalTransaction
from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.errors import InvalidRequest
from r3mes.backend.runtime import Runtime
from r3mes.backend.services import credits, deposits
from r3mes.chain.client_types import PREFIX

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/me", tags=["me"])

LEDGER_TIMEOUT_S = 2.0


class HoldOut(BaseModel):
    id: int
    amount: int
    ref: str
    expires_at: datetime


class LedgerOut(BaseModel):
    """The account as the ledger sees it (None fields when the ledger cannot be reached)."""

    balance: int | None = None
    reputation: int | None = None
    tier: str | None = None
    error: str | None = None


class MeOut(BaseModel):
    account_id: int
    address: str
    available: int
    held: int
    holds: list[HoldOut]
    tier: str
    """Rate-limit tier of this account in the backend."""
    is_admin: bool
    key_id: int | None
    scopes: list[str]
    ledger: LedgerOut
    deposit_address: str | None
    """Send credits here on the ledger (`MsgTransferCredits` from `address`) to top up;
    None when this backend takes no deposits."""
    chain_id: str
    chain_rpc: str


class UsageDay(BaseModel):
    day: date
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: int


class UsageOut(BaseModel):
    days: int
    usage: list[UsageDay]
    """One entry per day with chat requests, oldest first (UTC days)."""


class EntryOut(BaseModel):
    book: str
    amount: int


class TransactionOut(BaseModel):
    id: int
    kind: str
    amount: int
    ref: str
    node: str | None
    hold_id: int | None
    created_at: datetime
    entries: list[EntryOut]
    """This account's legs (available / held): what the movement did to its balances."""


class TransactionsPage(BaseModel):
    transactions: list[TransactionOut]
    next_cursor: str | None
    """Pass as `cursor` for the next (older) page; None at the end."""


@router.get("")
async def me(principal: ReadPrincipalDep, s: ReadSessionDep, runtime: RuntimeDep) -> MeOut:
    have = await credits.balance(s, account_id=principal.account_id)
    holds = await s.scalars(
        select(Hold)
        .where(Hold.account_id == principal.account_id, Hold.status == "open")
        .order_by(Hold.id)
        .limit(100)
    )
    return MeOut(
        account_id=principal.account_id,
        address=principal.address,
        available=have.available,
        held=have.held,
        holds=[
            HoldOut(id=h.id, amount=h.amount, ref=h.ref, expires_at=h.expires_at) for h in holds
        ],
        tier=principal.tier,
        is_admin=principal.is_admin,
        key_id=principal.key_id,
        scopes=sorted(principal.scopes),
        ledger=await _ledger(runtime, principal.address),
        deposit_address=deposits.deposit_address(runtime.settings),
        chain_id=runtime.settings.chain_id,
        chain_rpc=runtime.settings.chain_rpc,
    )


@router.get("/usage")
async def usage(
    principal: ReadPrincipalDep,
    s: ReadSessionDep,
    days: int = Query(default=30, ge=1, le=366),
) -> UsageOut:
    """The caller's chat per UTC day over the last `days` days: requests, tokens, credits."""
    since = datetime.now(UTC) - timedelta(days=days)
    day = func.date(ChatRequest.created_at)
    rows = await s.execute(
        select(
            day,
            func.count(),
            func.coalesce(func.sum(ChatRequest.prompt_tokens), 0),
            func.coalesce(func.sum(ChatRequest.completion_tokens), 0),
            func.coalesce(func.sum(ChatRequest.credits), 0),
        )
        .where(ChatRequest.account_id == principal.account_id, ChatRequest.created_at >= since)
        .group_by(day)
        .order_by(day)
    )
    return UsageOut(
        days=days,
        usage=[
            UsageDay(
                day=d if isinstance(d, date) else date.fromisoformat(str(d)),
                requests=int(n),
                prompt_tokens=int(p),
                completion_tokens=int(c),
                credits=int(cr),
            )
            for d, n, p, c, cr in rows
        ],
    )


@router.get("/transactions")
async def transactions(
    principal: ReadPrincipalDep,
    s: ReadSessionDep,
    cursor: str | None = Query(default=None, max_length=20),
    limit: int = Query(default=50, ge=1, le=200),
) -> TransactionsPage:
    query = (
        select(JournalTransaction)
        .where(JournalTransaction.account_id == principal.account_id)
        .order_by(JournalTransaction.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and 0 < int(cursor) <= MAX_ROW_ID):
            raise InvalidRequest("cursor: pass the next_cursor of the previous page")
        query = query.where(JournalTransaction.id < int(cursor))
    rows = list(await s.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    legs: dict[int, list[EntryOut]] = {}
    if rows:
        entries = await s.execute(
            select(JournalEntry.transaction_id, JournalEntry.book, JournalEntry.amount).where(
                JournalEntry.transaction_id.in_([r.id for r in rows]),
                JournalEntry.account_id == principal.account_id,
            )
        )
        for txn_id, book, amount in entries:
            legs.setdefault(int(txn_id), []).append(EntryOut(book=book, amount=int(amount)))
    return TransactionsPage(
        transactions=[
            TransactionOut(
                id=r.id,
                kind=r.kind,
                amount=r.amount,
                ref=r.ref,
                node=r.node,
                hold_id=r.hold_id,
                created_at=r.created_at,
                entries=legs.get(r.id, []),
            )
            for r in rows
        ],
        next_cursor=str(rows[-1].id) if more else None,
    )


async def _ledger(runtime: Runtime, address: str) -> LedgerOut:
    url = f"{runtime.settings.chain_rpc.rstrip('/')}{PREFIX}/accounts/{address}"
    try:
        response = await runtime.http.get(url, timeout=LEDGER_TIMEOUT_S)
        doc: Any = response.json()["account"]
        return LedgerOut(
            balance=int(doc["balance"]), reputation=int(doc["reputation"]), tier=str(doc["tier"])
        )
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.debug("ledger account lookup failed: %r", exc)
        return LedgerOut(error="the ledger did not answer; try again later")
