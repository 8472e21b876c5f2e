"""`/api/keys`: the logged-in account's API keys (create shows the key once; list; revoke)."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter
from pydantic import BaseModel, Field

from r3mes.backend.api.deps import (
    ReadSessionDep,
    RowId,
    RuntimeDep,
    SessionPrincipalDep,
    WriteSessionDep,
)
from r3mes.backend.errors import InvalidRequest
from r3mes.backend.services import credits, keys

router = APIRouter(prefix="/api/keys", tags=["keys"])


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(default_factory=lambda: ["chat", "read"], max_length=4)
    expires_at: datetime | None = None
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class KeyPublic(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str
    """The full key: shown this once, never again."""


def _public(view: keys.KeyView) -> KeyPublic:
    return KeyPublic(**view.__dict__)


@router.get("")
async def list_keys(principal: SessionPrincipalDep, s: ReadSessionDep) -> list[KeyPublic]:
    return [_public(v) for v in await keys.list_keys(s, account_id=principal.account_id)]


@router.post("", status_code=201)
async def create_key(
    body: KeyCreate, principal: SessionPrincipalDep, s: WriteSessionDep, runtime: RuntimeDep
) -> KeyCreated:
    if body.expires_at is not None and body.expires_in_days is not None:
        raise InvalidRequest("give expires_at or expires_in_days, not both")
    expires = body.expires_at
    if expires is not None and expires.tzinfo is None:
        raise InvalidRequest("expires_at: include a time zone (e.g. 2030-01-01T00:00:00Z)")
    if body.expires_in_days is not None:
        expires = credits.utcnow() + timedelta(days=body.expires_in_days)
    async with s.begin():
        view, key = await keys.create_key(
            s,
            pepper=runtime.key_pepper,
            account_id=principal.account_id,
            name=body.name,
            scopes=body.scopes,
            expires_at=expires,
            max_keys=runtime.settings.max_keys_per_account,
        )
    return KeyCreated(**view.__dict__, key=key)


@router.delete("/{key_id}")
async def revoke_key(
    key_id: RowId, principal: SessionPrincipalDep, runtime: RuntimeDep
) -> KeyPublic:
    view = await keys.revoke_and_forget(runtime, key_id=key_id, account_id=principal.account_id)
    return _public(view)
