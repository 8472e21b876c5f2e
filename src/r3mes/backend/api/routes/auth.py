"""`/api/auth/*`: wallet login (challenge, login), token refresh and logout.

Login answers the tokens in JSON (for programs and `r3mes wallet login`) and also sets the
dashboard's cookies: `r3mes_access` (HttpOnly, SameSite=Strict, path /), `r3mes_refresh`
(HttpOnly, SameSite=Strict, path /api/auth) and the readable `r3mes_csrf` that unsafe
cookie-authenticated requests echo in `X-CSRF-Token`.
"""

from __future__ import annotations

import math
import secrets
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from r3mes.backend import adr036
from r3mes.backend.api.deps import (
    ACCESS_COOKIE,
    CSRF_COOKIE,
    REFRESH_COOKIE,
    ClientIpDep,
    RuntimeDep,
    SettingsDep,
    WriteSessionDep,
    check_csrf,
)
from r3mes.backend.errors import RateLimited, Unauthorized
from r3mes.backend.services import auth, credits
from r3mes.backend.services.chat_setup import chat_service
from r3mes.backend.services.limits import Bucket
from r3mes.backend.settings import BackendSettings

router = APIRouter(prefix="/api/auth", tags=["auth"])


class ChallengeIn(BaseModel):
    address: str = Field(max_length=100, description="The wallet address (remes1...).")


class ChallengeOut(BaseModel):
    nonce: str
    message: str
    """Sign exactly this text with ADR-036 (Keplr `signArbitrary`)."""
    address: str
    domain: str
    chain_id: str
    issued_at: datetime
    expires_at: datetime


class PubKeyIn(BaseModel):
    type: str = Field(max_length=64)
    value: str = Field(max_length=100)


class LoginIn(BaseModel):
    message: str = Field(max_length=2000)
    signature: str = Field(max_length=200, description="base64 64-byte r||s signature")
    pub_key: PubKeyIn


class RefreshIn(BaseModel):
    refresh_token: str | None = Field(default=None, max_length=200)


class TokensOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime
    account_id: int
    address: str


@router.post("/challenge")
async def challenge(
    body: ChallengeIn,
    s: WriteSessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    ip: ClientIpDep,
) -> ChallengeOut:
    # unauthenticated and one row per call: bounded per client address
    bucket = Bucket(name=f"challenge:ip:{ip}", capacity=settings.challenges_per_min, cost=1)
    decision = await chat_service(runtime).limiter.take([bucket])
    if not decision.allowed:
        wait = max(1, math.ceil(decision.retry_after_s))
        raise RateLimited(
            f"too many login challenges from this address; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    async with s.begin():
        made = await auth.create_challenge(s, settings=settings, address=body.address)
    return ChallengeOut(
        nonce=made.nonce,
        message=made.message,
        address=made.address,
        domain=made.domain,
        chain_id=made.chain_id,
        issued_at=made.issued_at,
        expires_at=made.expires_at,
    )


@router.post("/login")
async def login(
    body: LoginIn, response: Response, s: WriteSessionDep, runtime: RuntimeDep
) -> TokensOut:
    try:
        signature = adr036.StdSignature.from_json(
            {"pub_key": body.pub_key.model_dump(), "signature": body.signature}
        )
    except adr036.Adr036Error as exc:
        raise Unauthorized(f"signature: {exc}") from exc
    async with s.begin():
        tokens = await auth.login(
            s,
            settings=runtime.settings,
            jwt_key=runtime.jwt_key,
            message=body.message,
            signature=signature,
        )
    set_session_cookies(response, tokens, runtime.settings)
    return _out(tokens)


@router.post("/refresh")
async def refresh(
    request: Request,
    response: Response,
    s: WriteSessionDep,
    runtime: RuntimeDep,
    body: RefreshIn | None = None,
) -> TokensOut:
    token = body.refresh_token if body is not None and body.refresh_token else None
    if token is None:
        token = request.cookies.get(REFRESH_COOKIE)
        if not token:
            raise Unauthorized("send refresh_token in the body or the r3mes_refresh cookie")
        check_csrf(request)
    try:
        async with s.begin():
            tokens = await auth.refresh(
                s, settings=runtime.settings, jwt_key=runtime.jwt_key, refresh_token=token
            )
    except auth.RefreshReused as reused:
        async with s.begin():  # the family revocation must stick even though we refuse
            await auth.revoke_family(s, family=reused.family)
        raise
    set_session_cookies(response, tokens, runtime.settings)
    return _out(tokens)


@router.post("/logout")
async def logout(
    request: Request,
    response: Response,
    s: WriteSessionDep,
    body: RefreshIn | None = None,
) -> dict[str, Any]:
    token = body.refresh_token if body is not None and body.refresh_token else None
    if token is None:
        token = request.cookies.get(REFRESH_COOKIE)
        if token:
            check_csrf(request)
    if token:
        async with s.begin():
            await auth.logout(s, refresh_token=token)
    for name, path in ((ACCESS_COOKIE, "/"), (REFRESH_COOKIE, "/api/auth"), (CSRF_COOKIE, "/")):
        response.delete_cookie(name, path=path)
    return {"ok": True}


def set_session_cookies(response: Response, tokens: auth.Tokens, settings: BackendSettings) -> None:
    secure = settings.base_url.startswith("https://")
    access_age = int((tokens.access_expires_at - credits.utcnow()).total_seconds())
    refresh_age = int((tokens.refresh_expires_at - credits.utcnow()).total_seconds())
    response.set_cookie(
        ACCESS_COOKIE,
        tokens.access_token,
        max_age=access_age,
        httponly=True,
        secure=secure,
        samesite="strict",
        path="/",
    )
    response.set_cookie(
        REFRESH_COOKIE,
        tokens.refresh_token,
        max_age=refresh_age,
        httponly=True,
        secure=secure,
        samesite="strict",
        path="/api/auth",
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(24),
        max_age=refresh_age,
        httponly=False,
        secure=secure,
        samesite="strict",
        path="/",
    )


def _out(tokens: auth.Tokens) -> TokensOut:
    return TokensOut(
        access_token=tokens.access_token,
        expires_at=tokens.access_expires_at,
        refresh_token=tokens.refresh_token,
        refresh_expires_at=tokens.refresh_expires_at,
        account_id=tokens.account_id,
        address=tokens.address,
    )
