"""API keys: `r3k_<lookup id>_<secret>`, shown once, stored as HMAC-SHA256 under the pepper.

The lookup id (12 base62 characters) is kept in clear to find the row; the secret (32 random
bytes, base64url) is only ever stored as HMAC-SHA256(pepper, whole key) and compared in
constant time. Keys carry a name, scopes (`chat`, `read`), an optional expiry,
`last_used_at` (written at most once a minute per key) and a revoke time.

Verified keys are cached for a few seconds so a busy client does not cost a database read
per request: in Redis when one is configured (shared by every backend process), else in
process memory when the database is SQLite (one process). With PostgreSQL and no Redis there
may be several processes and no shared cache, so every request reads the database. After
its commit a revoke writes the revoked row into the cache over whatever is there, and fills
from database reads never replace an entry (Redis SET NX), so a request that read the key
just before the revoke cannot put it back: a revoked key fails on the very next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import string
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.accounts import Account, ApiKey
from r3mes.backend.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from r3mes.backend.services import credits
from r3mes.backend.services.auth import Principal

if TYPE_CHECKING:
    from r3mes.backend.runtime import Runtime

log = logging.getLogger(__name__)

PREFIX = "r3k_"
SCOPES = frozenset({"chat", "read"})
LOOKUP_LENGTH = 12
CACHE_TTL_S = 30.0
LAST_USED_EVERY_S = 60.0
SERVICE_KEY = "api_key_cache"
_BASE62 = string.digits + string.ascii_letters


@dataclass(frozen=True)
class KeyRecord:
    """What authentication needs of a key (and what the cache holds)."""

    id: int
    account_id: int
    address: str
    secret_hash: str
    scopes: tuple[str, ...]
    expires_at: float | None
    """Unix seconds, or None."""
    revoked: bool
    tier: str
    is_admin: bool


@dataclass(frozen=True)
class KeyView:
    """A key as its owner sees it (never the secret)."""

    id: int
    name: str
    prefix: str
    """`r3k_<lookup id>`: enough to recognise the key in a list."""
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def key_hash(pepper: bytes, key: str) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def parse_key(presented: str) -> str:
    """The lookup id of a well-formed key; Unauthorized otherwise."""
    if not presented.startswith(PREFIX):
        raise Unauthorized(f"API keys start with {PREFIX}; check the key you sent")
    lookup, sep, secret = presented[len(PREFIX) :].partition("_")
    if not sep or len(lookup) != LOOKUP_LENGTH or len(secret) != 43:
        raise Unauthorized("API key is malformed; copy the whole key as it was shown")
    return lookup


def _view(row: ApiKey) -> KeyView:
    return KeyView(
        id=row.id,
        name=row.name,
        prefix=PREFIX + row.lookup_id,
        scopes=sorted(row.scopes.split()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


# -- owner operations ---------------------------------------------------------------------


async def create_key(
    s: AsyncSession,
    *,
    pepper: bytes,
    account_id: int,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    max_keys: int,
    now: datetime | None = None,
) -> tuple[KeyView, str]:
    """A new key for `account_id`: (its view, the full key, which is never shown again)."""
    now = now or credits.utcnow()
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidRequest("name: give the key a name of 1..100 characters")
    wanted = set(scopes)
    if not wanted or not wanted <= SCOPES:
        raise InvalidRequest(f"scopes: choose from {sorted(SCOPES)}")
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("expires_at: must be in the future")
    # Lock the account row so two concurrent creates cannot both pass the limit.
    locked = select(Account.id).where(Account.id == account_id).with_for_update()
    if await s.scalar(locked) is None:
        raise NotFound(f"account {account_id} does not exist")
    active = await s.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
        .where((ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now))
    )
    if int(active or 0) >= max_keys:
        raise Conflict(f"this account already has {max_keys} active API keys; revoke one first")
    lookup = "".join(secrets.choice(_BASE62) for _ in range(LOOKUP_LENGTH))
    key = f"{PREFIX}{lookup}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        account_id=account_id,
        lookup_id=lookup,
        secret_hash=key_hash(pepper, key),
        name=name,
        scopes=" ".join(sorted(wanted)),
        created_at=now,
        expires_at=expires_at,
    )
    s.add(row)
    await s.flush()
    return _view(row), key


async def list_keys(s: AsyncSession, *, account_id: int) -> list[KeyView]:
    rows = await s.scalars(
        select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.id.desc())
    )
    return [_view(r) for r in rows]


async def revoke_key(
    s: AsyncSession, *, key_id: int, account_id: int | None, now: datetime | None = None
) -> tuple[KeyView, str]:
    """Revoke key `key_id` (of `account_id`, or any account for an admin: None).

    Returns its view and lookup id (the cache entry the caller must drop).
    """
    query = select(ApiKey).where(ApiKey.id == key_id)
    if account_id is not None:
        query = query.where(ApiKey.account_id == account_id)
    row = await s.scalar(query)
    if row is None:
        raise NotFound(f"API key {key_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = now or credits.utcnow()
        await s.flush()
    return _view(row), row.lookup_id


# -- authentication -----------------------------------------------------------------------


class KeyCache:
    """Verified key records for a few seconds: Redis (shared) or this process's memory."""

    def __init__(self, runtime: Runtime) -> None:
        self.redis = runtime.redis
        self.prefix = runtime.settings.redis_prefix + "apikey:"
        self.local_enabled = self.redis is None and runtime.db.is_sqlite
        self.local: dict[str, tuple[float, KeyRecord]] = {}
        self.last_used: dict[int, float] = {}

    async def get(self, lookup: str) -> KeyRecord | None:
        if self.redis is not None:
            raw = await self.redis.get(self.prefix + lookup)
            return None if raw is None else KeyRecord(**_with_tuple(json.loads(raw)))
        if self.local_enabled:
            hit = self.local.get(lookup)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        return None

    async def put(self, lookup: str, record: KeyRecord, *, overwrite: bool = False) -> None:
        """Cache `record`. A fill from a database read never replaces an entry already
        there (`overwrite=False`, Redis SET NX): a read that raced a revoke cannot put the
        unrevoked row back over the revoke's own entry."""
        if self.redis is not None:
            ttl_ms = int(CACHE_TTL_S * 1000)
            value = json.dumps(asdict(record))
            await self.redis.set(self.prefix + lookup, value, px=ttl_ms, nx=not overwrite)
        elif self.local_enabled:
            current = self.local.get(lookup)
            if overwrite or current is None or current[0] <= time.monotonic():
                self.local[lookup] = (time.monotonic() + CACHE_TTL_S, record)

    async def drop(self, lookup: str) -> None:
        self.local.pop(lookup, None)
        if self.redis is not None:
            await self.redis.delete(self.prefix + lookup)


def _with_tuple(doc: dict[str, Any]) -> dict[str, Any]:
    doc["scopes"] = tuple(doc["scopes"])
    return doc


def key_cache(runtime: Runtime) -> KeyCache:
    found = runtime.services.get(SERVICE_KEY)
    if isinstance(found, KeyCache):
        return found
    cache = KeyCache(runtime)
    runtime.services[SERVICE_KEY] = cache
    return cache


async def authenticate(runtime: Runtime, presented: str) -> Principal:
    """The principal of API key `presented`; Unauthorized (with the reason) otherwise."""
    lookup = parse_key(presented)
    cache = key_cache(runtime)
    record = await cache.get(lookup)
    if record is None:
        async with runtime.db.read() as s:
            record = await _load(s, lookup, runtime.settings.admins)
        if record is None:
            raise Unauthorized("API key not recognised; create one in the dashboard")
        await cache.put(lookup, record)
    expected = key_hash(runtime.key_pepper, presented)
    if not hmac.compare_digest(expected, record.secret_hash):
        raise Unauthorized("API key not recognised; create one in the dashboard")
    if record.revoked:
        raise Unauthorized("API key was revoked; create a new one")
    if record.expires_at is not None and time.time() >= record.expires_at:
        raise Unauthorized("API key expired; create a new one")
    await _touch(runtime, cache, record.id)
    return Principal(
        account_id=record.account_id,
        address=record.address,
        scopes=frozenset(record.scopes),
        key_id=record.id,
        tier=record.tier,
        is_admin=record.is_admin,
    )


async def revoke_and_forget(runtime: Runtime, *, key_id: int, account_id: int | None) -> KeyView:
    """Revoke a key and drop it from every cache, so the next request with it fails."""
    cache = key_cache(runtime)
    async with runtime.db.write() as s, s.begin():
        view, lookup = await revoke_key(s, key_id=key_id, account_id=account_id)
        await cache.drop(lookup)
    # After the commit, the revoked row itself goes into the cache (overwriting whatever a
    # racing request put there); later fills never replace it (see KeyCache.put).
    async with runtime.db.read() as s:
        revoked = await _load(s, lookup, runtime.settings.admins)
    if revoked is not None:
        await cache.put(lookup, revoked, overwrite=True)
    return view


async def _load(s: AsyncSession, lookup: str, admins: tuple[str, ...]) -> KeyRecord | None:
    row = (
        await s.execute(
            select(ApiKey, Account.address, Account.tier, Account.is_admin)
            .join(Account, Account.id == ApiKey.account_id)
            .where(ApiKey.lookup_id == lookup)
        )
    ).one_or_none()
    if row is None:
        return None
    key: ApiKey = row[0]
    return KeyRecord(
        id=key.id,
        account_id=key.account_id,
        address=row.address,
        secret_hash=key.secret_hash,
        scopes=tuple(key.scopes.split()),
        expires_at=None if key.expires_at is None else key.expires_at.timestamp(),
        revoked=key.revoked_at is not None,
        tier=row.tier,
        is_admin=bool(row.is_admin) or row.address in admins,
    )


async def _touch(runtime: Runtime, cache: KeyCache, key_id: int) -> None:
    """Record `last_used_at`, at most once a minute per key per process."""
    now = time.monotonic()
    if now - cache.last_used.get(key_id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
        return
    cache.last_used[key_id] = now
    try:
        async with runtime.db.write() as s, s.begin():
            await s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(last_used_at=datetime.now(UTC))
                .execution_options(synchronize_session=False)
            )
    except Exception:
        log.warning("could not record last use of API key %d", key_id, exc_info=True)
