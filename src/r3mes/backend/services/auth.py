"""Wallet login: challenges, ADR-036 verification, access tokens (JWT) and refresh tokens.

    POST /api/auth/challenge {address}      -> a single-use nonce message (domain, chain id,
                                               issued-at, expiry) stored server-side
    wallet signs the message (ADR-036, see r3mes.backend.adr036)
    POST /api/auth/login {message, signature, pub_key}
                                            -> access token (HS256 JWT, minutes) and a
                                               refresh token (random, stored as SHA-256)
    POST /api/auth/refresh {refresh_token}  -> both rotated; the old refresh token is spent

A refresh token belongs to a *family* (one login). Presenting a spent token again means it
was copied: the whole family is revoked, and access tokens of that family stop working on
their next request (`Principal` lookups check the family). Every refusal is `Unauthorized`
with a reason a user can act on; no token or secret is ever logged.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend import adr036
from r3mes.backend.db.accounts import Account, LoginChallenge, RefreshToken
from r3mes.backend.errors import InvalidRequest, Unauthorized
from r3mes.backend.services import credits
from r3mes.backend.settings import BackendSettings
from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError

ISSUER = "r3mes-backend"
JWT_ALGORITHM = "HS256"
REFRESH_PREFIX = "r3r_"
SESSION_SCOPES = frozenset({"chat", "read", "session"})
_INTRO = " wants you to sign in to R3MES with your account:"
_STATEMENT = (
    "Sign in to use your R3MES credits and API keys. "
    "This signature sends no transaction and costs nothing."
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an account, through an API key (`key_id`) or a login session."""

    account_id: int
    address: str
    scopes: frozenset[str]
    """API key: its scopes ("chat", "read"); session: {"chat", "read", "session"}."""
    key_id: int | None
    """The API key used; None for a session (JWT or cookie)."""
    tier: str
    """Account tier name for rate limits ("default" unless an admin set one)."""
    is_admin: bool


@dataclass(frozen=True)
class Challenge:
    nonce: str
    message: str
    address: str
    domain: str
    chain_id: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Tokens:
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime
    account_id: int
    address: str


# -- challenges ---------------------------------------------------------------------------


def challenge_message(
    *,
    domain: str,
    address: str,
    nonce: str,
    chain_id: str,
    issued_at: datetime,
    expires_at: datetime,
) -> str:
    """The text a wallet shows and signs (SIWE-like, one field per line)."""
    return "\n".join(
        [
            f"{domain}{_INTRO}",
            address,
            "",
            _STATEMENT,
            "",
            f"Nonce: {nonce}",
            f"Chain ID: {chain_id}",
            f"Issued At: {_iso(issued_at)}",
            f"Expiration Time: {_iso(expires_at)}",
        ]
    )


def parse_challenge(message: str) -> dict[str, str]:
    """The fields of a challenge message; Unauthorized if it is not one."""
    lines = message.split("\n")
    if len(lines) != 9 or not lines[0].endswith(_INTRO):
        raise Unauthorized("the signed message is not an R3MES login challenge")
    fields = {"domain": lines[0][: -len(_INTRO)], "address": lines[1]}
    for line, name in zip(
        lines[5:], ("Nonce", "Chain ID", "Issued At", "Expiration Time"), strict=True
    ):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            raise Unauthorized(f"the signed message has no {name!r} line")
        fields[name] = line[len(prefix) :]
    return fields


async def create_challenge(
    s: AsyncSession, *, settings: BackendSettings, address: str, now: datetime | None = None
) -> Challenge:
    try:
        address = validate_address(address)
    except AddressError as exc:
        raise InvalidRequest(f"address: {exc}") from exc
    now = (now or credits.utcnow()).replace(microsecond=0)
    expires = now + timedelta(seconds=settings.challenge_ttl_s)
    nonce = secrets.token_hex(16)
    message = challenge_message(
        domain=settings.domain,
        address=address,
        nonce=nonce,
        chain_id=settings.chain_id,
        issued_at=now,
        expires_at=expires,
    )
    s.add(
        LoginChallenge(
            nonce=nonce, address=address, message=message, created_at=now, expires_at=expires
        )
    )
    # Old challenges are useless after expiry; keep the table small.
    await s.execute(
        delete(LoginChallenge)
        .where(LoginChallenge.expires_at < now - timedelta(hours=1))
        .execution_options(synchronize_session=False)
    )
    return Challenge(nonce, message, address, settings.domain, settings.chain_id, now, expires)


async def login(
    s: AsyncSession,
    *,
    settings: BackendSettings,
    jwt_key: bytes,
    message: str,
    signature: adr036.StdSignature,
    now: datetime | None = None,
) -> Tokens:
    """Check a signed challenge and open a session; Unauthorized with the reason otherwise."""
    now = now or credits.utcnow()
    fields = parse_challenge(message)
    if fields["domain"] != settings.domain:
        raise Unauthorized(
            f"the challenge is for domain {fields['domain']!r}; this server is {settings.domain!r}"
        )
    if fields["Chain ID"] != settings.chain_id:
        raise Unauthorized(
            f"the challenge is for chain {fields['Chain ID']!r}; "
            f"this server uses {settings.chain_id!r}"
        )
    stored = await s.get(LoginChallenge, fields["Nonce"])
    if stored is None:
        raise Unauthorized("unknown challenge nonce; request a new challenge")
    if stored.message != message:
        raise Unauthorized("the signed message differs from the challenge this server issued")
    if stored.used_at is not None:
        raise Unauthorized("this challenge was already used (replay); request a new challenge")
    if now >= stored.expires_at:
        raise Unauthorized("the challenge expired; request a new challenge and sign it in time")
    if not adr036.signer_matches(signature, stored.address):
        raise Unauthorized(f"the public key is not the key of {stored.address}")
    if not adr036.verify(signature, signer=stored.address, data=message.encode()):
        raise Unauthorized("the signature does not verify for this challenge (ADR-036)")
    spent = await s.execute(
        update(LoginChallenge)
        .where(LoginChallenge.nonce == stored.nonce, LoginChallenge.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(spent, "rowcount", 0)) != 1:
        raise Unauthorized("this challenge was already used (replay); request a new challenge")
    account_id = await credits.ensure_account(s, address=stored.address, now=now)
    return await _issue(
        s,
        settings=settings,
        jwt_key=jwt_key,
        account_id=account_id,
        address=stored.address,
        family=secrets.token_hex(16),
        now=now,
    )


# -- refresh ------------------------------------------------------------------------------


class RefreshReused(Unauthorized):
    """A spent refresh token came back: the caller revokes `family` (commits), then refuses."""

    def __init__(self, message: str, *, family: str) -> None:
        super().__init__(message)
        self.family = family


async def refresh(
    s: AsyncSession,
    *,
    settings: BackendSettings,
    jwt_key: bytes,
    refresh_token: str,
    now: datetime | None = None,
) -> Tokens:
    """Rotate: spend `refresh_token`, issue a new pair in the same family.

    Raises RefreshReused for a spent token: the caller rolls this transaction back, revokes
    the family (`revoke_family`) in a new one, and answers 401.
    """
    now = now or credits.utcnow()
    row = await s.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(refresh_token))
    )
    if row is None:
        raise Unauthorized("unknown refresh token; log in again")
    if row.revoked_at is not None:
        raise Unauthorized("this session was revoked; log in again")
    if row.used_at is not None:
        raise RefreshReused(
            "refresh token was already used; every session of this login is revoked. Log in again",
            family=row.family,
        )
    if now >= row.expires_at:
        raise Unauthorized("refresh token expired; log in again")
    spent = await s.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(spent, "rowcount", 0)) != 1:
        raise RefreshReused(
            "refresh token was used twice at once; the session is revoked", family=row.family
        )
    address = await s.scalar(select(Account.address).where(Account.id == row.account_id))
    if address is None:
        raise Unauthorized("the account of this session no longer exists")
    return await _issue(
        s,
        settings=settings,
        jwt_key=jwt_key,
        account_id=row.account_id,
        address=address,
        family=row.family,
        now=now,
    )


async def revoke_family(s: AsyncSession, *, family: str, now: datetime | None = None) -> None:
    await s.execute(
        update(RefreshToken)
        .where(RefreshToken.family == family, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now or credits.utcnow())
        .execution_options(synchronize_session=False)
    )


async def logout(s: AsyncSession, *, refresh_token: str) -> None:
    """Revoke the session (family) `refresh_token` belongs to; unknown tokens are ignored."""
    family = await s.scalar(
        select(RefreshToken.family).where(RefreshToken.token_hash == token_hash(refresh_token))
    )
    if family is not None:
        await revoke_family(s, family=family)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- access tokens ------------------------------------------------------------------------


def issue_access_token(
    *, jwt_key: bytes, account_id: int, address: str, family: str, now: datetime, ttl_s: int
) -> tuple[str, datetime]:
    expires = now + timedelta(seconds=ttl_s)
    claims = {
        "iss": ISSUER,
        "sub": str(account_id),
        "addr": address,
        "sid": family,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "typ": "access",
    }
    return jwt.encode(claims, jwt_key, algorithm=JWT_ALGORITHM), expires


def decode_access_token(token: str, *, jwt_key: bytes) -> dict[str, Any]:
    """The claims of a valid access token; Unauthorized (with the reason) otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("access token is malformed; log in again") from exc
    if header.get("alg") != JWT_ALGORITHM:
        raise Unauthorized(
            f"access token algorithm must be {JWT_ALGORITHM}, not {header.get('alg')!r}"
        )
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            jwt_key,
            algorithms=[JWT_ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "sid", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("access token expired; refresh it or log in again") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized("access token signature is invalid (tampered or foreign)") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"access token is invalid: {exc}") from exc
    if claims.get("typ") != "access":
        raise Unauthorized("this token is not an access token")
    return claims


async def session_principal(
    s: AsyncSession, *, settings: BackendSettings, jwt_key: bytes, token: str
) -> Principal:
    """The principal of a login session's access token (its family must not be revoked)."""
    claims = decode_access_token(token, jwt_key=jwt_key)
    try:
        account_id = int(claims["sub"])
    except (TypeError, ValueError) as exc:
        raise Unauthorized("access token has no valid subject") from exc
    revoked = (
        select(func.count())
        .select_from(RefreshToken)
        .where(RefreshToken.family == str(claims["sid"]), RefreshToken.revoked_at.is_not(None))
        .scalar_subquery()
    )
    row = (
        await s.execute(
            select(Account.address, Account.tier, Account.is_admin, revoked.label("revoked")).where(
                Account.id == account_id
            )
        )
    ).one_or_none()
    if row is None:
        raise Unauthorized("the account of this session no longer exists")
    if row.revoked:
        raise Unauthorized("this session was revoked (logout or a reused refresh token)")
    return Principal(
        account_id=account_id,
        address=row.address,
        scopes=SESSION_SCOPES,
        key_id=None,
        tier=row.tier,
        is_admin=bool(row.is_admin) or row.address in settings.admins,
    )


async def _issue(
    s: AsyncSession,
    *,
    settings: BackendSettings,
    jwt_key: bytes,
    account_id: int,
    address: str,
    family: str,
    now: datetime,
) -> Tokens:
    access, access_expires = issue_access_token(
        jwt_key=jwt_key,
        account_id=account_id,
        address=address,
        family=family,
        now=now,
        ttl_s=settings.access_token_ttl_s,
    )
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    refresh_expires = now + timedelta(seconds=settings.refresh_token_ttl_s)
    s.add(
        RefreshToken(
            account_id=account_id,
            family=family,
            token_hash=token_hash(token),
            created_at=now,
            expires_at=refresh_expires,
        )
    )
    await s.flush()
    return Tokens(access, access_expires, token, refresh_expires, account_id, address)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
