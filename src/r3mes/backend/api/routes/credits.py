"""`/api/credits/holds`: reserve credits, then capture what was used (or release).

For clients that meter their own work against their balance (a batch job reserves its
budget up front, then settles the real cost). Paid chat does the same internally. Every call
needs an `Idempotency-Key` header: a retry returns the first result, the same key with
another body is 409. A hold that is neither captured nor released is released when it
expires, so a crashed client never strands credits.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field

from r3mes.backend.api.deps import (
    ChatPrincipalDep,
    RowId,
    RuntimeDep,
    WriteSessionDep,
)
from r3mes.backend.db.accounts import Hold
from r3mes.backend.errors import InvalidRequest, NotFound
from r3mes.backend.services import credits

router = APIRouter(prefix="/api/credits", tags=["credits"])

IdempotencyKey = Header(min_length=1, max_length=200, alias="Idempotency-Key")
API_REF = "api:"
"""Refs of holds made here start with this; only those can be settled here. Other holds
(a chat request's `chat:...`) belong to the service that made them: settling one here would
let a caller capture their own chat's hold for 0 and chat for free."""


class HoldIn(BaseModel):
    amount: int = Field(gt=0, le=10**15)
    ttl_s: int | None = Field(default=None, ge=1, le=86_400)
    """Seconds until the hold expires (default: the server's hold TTL)."""
    ref: str = Field(default="", max_length=200 - len(API_REF))


class HoldOut(BaseModel):
    id: int
    amount: int
    expires_at: datetime
    available: int


class CaptureIn(BaseModel):
    amount: int = Field(ge=0, le=10**15)
    ref: str = Field(default="", max_length=200)


class SettledOut(BaseModel):
    hold_id: int
    captured: int
    released: int
    available: int


@router.post("/holds", status_code=201)
async def create_hold(
    body: HoldIn,
    principal: ChatPrincipalDep,
    s: WriteSessionDep,
    runtime: RuntimeDep,
    idempotency_key: str = IdempotencyKey,
) -> HoldOut:
    limit = runtime.settings.hold_ttl_s
    ttl = body.ttl_s or limit
    if ttl > limit:
        raise InvalidRequest(f"ttl_s: at most {limit} seconds on this server")
    async with runtime.db.serial(principal.account_id), s.begin():
        made = await credits.hold(
            s,
            account_id=principal.account_id,
            amount=body.amount,
            idempotency_key=idempotency_key,
            ttl_s=ttl,
            ref=API_REF + body.ref,
        )
        have = await credits.balance(s, account_id=principal.account_id)
    return HoldOut(
        id=made.id, amount=made.amount, expires_at=made.expires_at, available=have.available
    )


@router.post("/holds/{hold_id}/capture")
async def capture_hold(
    hold_id: RowId,
    body: CaptureIn,
    principal: ChatPrincipalDep,
    s: WriteSessionDep,
    runtime: RuntimeDep,
    idempotency_key: str = IdempotencyKey,
) -> SettledOut:
    async with runtime.db.serial(principal.account_id), s.begin():
        await _own(s, hold_id, principal.account_id)
        done = await credits.capture(
            s, hold_id=hold_id, amount=body.amount, idempotency_key=idempotency_key, ref=body.ref
        )
        have = await credits.balance(s, account_id=principal.account_id)
    return SettledOut(
        hold_id=hold_id, captured=done.amount, released=done.released, available=have.available
    )


@router.post("/holds/{hold_id}/release")
async def release_hold(
    hold_id: RowId,
    principal: ChatPrincipalDep,
    s: WriteSessionDep,
    runtime: RuntimeDep,
    idempotency_key: str = IdempotencyKey,
) -> SettledOut:
    async with runtime.db.serial(principal.account_id), s.begin():
        await _own(s, hold_id, principal.account_id)
        done = await credits.release(s, hold_id=hold_id, idempotency_key=idempotency_key)
        have = await credits.balance(s, account_id=principal.account_id)
    return SettledOut(hold_id=hold_id, captured=0, released=done.amount, available=have.available)


async def _own(s: WriteSessionDep, hold_id: int, account_id: int) -> None:
    owner = await s.get(Hold, hold_id)
    if owner is None or owner.account_id != account_id or not owner.ref.startswith(API_REF):
        raise NotFound(f"hold {hold_id} does not exist")
