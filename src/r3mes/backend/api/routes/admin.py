"""`/api/admin/*`: accounts, credit grants and key revokes, for admin sessions; all audited."""

from __future__ import annotations

import json
from datetime import datetime

from fastapi import APIRouter, Header, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from r3mes.backend.api.deps import (
    MAX_ROW_ID,
    AdminDep,
    ReadSessionDep,
    RowId,
    RuntimeDep,
    WriteSessionDep,
)
from r3mes.backend.api.routes.keys import KeyPublic
from r3mes.backend.db.accounts import Account, AdminAudit
from r3mes.backend.errors import InvalidRequest, NotFound
from r3mes.backend.services import credits, keys

router = APIRouter(prefix="/api/admin", tags=["admin"])


class AccountOut(BaseModel):
    id: int
    address: str
    tier: str
    is_admin: bool
    available: int
    held: int
    created_at: datetime


class AccountsPage(BaseModel):
    accounts: list[AccountOut]
    next_cursor: str | None


class AccountPatch(BaseModel):
    tier: str | None = Field(default=None, pattern=r"^[a-z0-9_-]{1,32}$")
    is_admin: bool | None = None


class GrantIn(BaseModel):
    amount: int = Field(gt=0, le=10**15)
    reason: str = Field(default="", max_length=200)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class GrantOut(BaseModel):
    journal_id: int
    account_id: int
    amount: int
    available: int


def _account(a: Account) -> AccountOut:
    return AccountOut(
        id=a.id,
        address=a.address,
        tier=a.tier,
        is_admin=a.is_admin,
        available=a.available,
        held=a.held,
        created_at=a.created_at,
    )


@router.get("/accounts")
async def accounts(
    _admin: AdminDep,
    s: ReadSessionDep,
    address: str | None = Query(default=None, max_length=100),
    cursor: int | None = Query(default=None, ge=0, le=MAX_ROW_ID),
    limit: int = Query(default=50, ge=1, le=200),
) -> AccountsPage:
    query = select(Account).order_by(Account.id.desc()).limit(limit + 1)
    if address:
        query = query.where(Account.address == address.lower())
    if cursor is not None:
        query = query.where(Account.id < cursor)
    rows = list(await s.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return AccountsPage(
        accounts=[_account(a) for a in rows], next_cursor=str(rows[-1].id) if more else None
    )


@router.get("/accounts/{account_id}")
async def account(account_id: RowId, _admin: AdminDep, s: ReadSessionDep) -> AccountOut:
    found = await s.get(Account, account_id)
    if found is None:
        raise NotFound(f"account {account_id} does not exist")
    return _account(found)


@router.patch("/accounts/{account_id}")
async def patch_account(
    account_id: RowId, body: AccountPatch, admin: AdminDep, s: WriteSessionDep
) -> AccountOut:
    async with s.begin():
        found = await s.get(Account, account_id, with_for_update=True)
        if found is None:
            raise NotFound(f"account {account_id} does not exist")
        changes = body.model_dump(exclude_none=True)
        if not changes:
            raise InvalidRequest("nothing to change: give tier and/or is_admin")
        for name, value in changes.items():
            setattr(found, name, value)
        _audit(s, admin.address, "account", f"account:{account_id}", changes)
    return _account(found)


@router.post("/accounts/{account_id}/grants", status_code=201)
async def grant(
    account_id: RowId,
    body: GrantIn,
    admin: AdminDep,
    s: WriteSessionDep,
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> GrantOut:
    key = body.idempotency_key or idempotency_key
    if not key:
        raise InvalidRequest("a grant needs an idempotency key (Idempotency-Key header or body)")
    async with s.begin():
        moved = await credits.grant(
            s,
            account_id=account_id,
            amount=body.amount,
            idempotency_key=key,
            actor=admin.address,
            reason=body.reason,
        )
        have = await credits.balance(s, account_id=account_id)
    return GrantOut(
        journal_id=moved.journal_id,
        account_id=account_id,
        amount=moved.amount,
        available=have.available,
    )


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: RowId, admin: AdminDep, runtime: RuntimeDep) -> KeyPublic:
    view = await keys.revoke_and_forget(runtime, key_id=key_id, account_id=None)
    async with runtime.db.write() as s, s.begin():
        _audit(s, admin.address, "revoke_key", f"key:{key_id}", {"name": view.name})
    return KeyPublic(**view.__dict__)


def _audit(s: WriteSessionDep, actor: str, action: str, target: str, detail: object) -> None:
    s.add(
        AdminAudit(
            actor=actor,
            action=action,
            target=target,
            detail=json.dumps(detail, sort_keys=True),
            created_at=credits.utcnow(),
        )
    )
