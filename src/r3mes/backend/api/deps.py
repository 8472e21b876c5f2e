"""`Annotated` dependencies for the routers; every one reads `app.state.runtime`.

Tests swap any of them with `app.dependency_overrides[get_x] = ...`.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.errors import Forbidden, Unauthorized
from r3mes.backend.runtime import Runtime
from r3mes.backend.services import auth, keys
from r3mes.backend.services.auth import Principal
from r3mes.backend.settings import BackendSettings


async def get_runtime(request: Request) -> Runtime:
    # The dependencies are `async def` although they never await: FastAPI runs a plain
    # `def` dependency in its thread pool, a thread hop per dependency per request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(runtime: RuntimeDep) -> BackendSettings:
    return runtime.settings


SettingsDep = Annotated[BackendSettings, Depends(get_settings)]


async def get_read_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """A read-only session (no writes are committed through it)."""
    async with runtime.db.read() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]


async def client_ip(request: Request) -> str:
    """The peer address (the backend does not trust forwarding headers by default)."""
    return request.client.host if request.client else "unknown"


ClientIpDep = Annotated[str, Depends(client_ip)]

MAX_ROW_ID = 2**63 - 1
"""The largest id a BigInteger column holds: bigger ids in a URL are 422, never a database error."""
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="A row id (1 to 2**63-1).")]


# -- authentication (accounts) -------------------------------------------------------------

ACCESS_COOKIE = "r3mes_access"
REFRESH_COOKIE = "r3mes_refresh"
CSRF_COOKIE = "r3mes_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """Any valid credential: `X-API-Key`, `Authorization: Bearer <API key | access token>`,
    or the dashboard's session cookie (unsafe methods then need the CSRF header)."""
    api_key = request.headers.get("x-api-key")
    if api_key:
        return await keys.authenticate(runtime, api_key.strip())
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "Authorization must be 'Bearer <API key or access token>'", headers=BEARER
            )
        if token.startswith(keys.PREFIX):
            return await keys.authenticate(runtime, token)
        return await _session(runtime, token)
    cookie = request.cookies.get(ACCESS_COOKIE)
    if cookie:
        if request.method not in SAFE_METHODS:
            check_csrf(request)
        return await _session(runtime, cookie)
    raise Unauthorized(
        "no credentials: send Authorization: Bearer <API key> (or X-API-Key), or log in",
        headers=BEARER,
    )


BEARER = {"WWW-Authenticate": "Bearer"}


def check_csrf(request: Request) -> None:
    """Double-submit check: the `X-CSRF-Token` header must equal the `r3mes_csrf` cookie."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), header.encode()):
        raise Forbidden(
            "missing or wrong X-CSRF-Token header (it must equal the r3mes_csrf cookie)"
        )


async def _session(runtime: Runtime, token: str) -> Principal:
    async with runtime.db.read() as s:
        return await auth.session_principal(
            s, settings=runtime.settings, jwt_key=runtime.jwt_key, token=token
        )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _scoped(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def require(principal: PrincipalDep) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(f"this credential lacks the {scope!r} scope")
        return principal

    return require


async def get_session_principal(principal: PrincipalDep) -> Principal:
    if "session" not in principal.scopes:
        raise Forbidden("log in with your wallet for this (API keys cannot manage keys)")
    return principal


async def get_admin(principal: PrincipalDep) -> Principal:
    if "session" not in principal.scopes or not principal.is_admin:
        raise Forbidden("admin only: log in with an address listed in the backend's admins")
    return principal


ChatPrincipalDep = Annotated[Principal, Depends(_scoped("chat"))]
ReadPrincipalDep = Annotated[Principal, Depends(_scoped("read"))]
SessionPrincipalDep = Annotated[Principal, Depends(get_session_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]


async def get_write_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """A session for one write transaction (`async with session.begin(): ...`)."""
    async with runtime.db.write() as session:
        yield session


WriteSessionDep = Annotated[AsyncSession, Depends(get_write_session)]
