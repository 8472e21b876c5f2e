"""Websockets: public `/ws/blocks`, `/ws/network_status`, `/ws/miner_stats?address=`,
`/ws/training_metrics`, and the private `/ws/usage` (schema in docs/backend.md)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from r3mes.backend.api.deps import ACCESS_COOKIE
from r3mes.backend.errors import BackendError, Unauthorized
from r3mes.backend.runtime import Runtime
from r3mes.backend.services import auth, keys
from r3mes.backend.services.auth import Principal
from r3mes.backend.services.live import explorer_service, miner_stats
from r3mes.backend.services.usage import usage_producer
from r3mes.backend.services.ws import CLOSE_BAD_REQUEST, CLOSE_UNAUTHORIZED, encode, refuse
from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError

router = APIRouter(tags=["explorer"])
PUBLIC = ("blocks", "network_status", "training_metrics")


def _runtime(ws: WebSocket) -> Runtime:
    runtime: Runtime = ws.app.state.runtime
    return runtime


def _ip(ws: WebSocket) -> str:
    return ws.client.host if ws.client else "unknown"


def _public(channel: str) -> None:
    async def endpoint(ws: WebSocket) -> None:
        service = explorer_service(_runtime(ws))
        last = service.last.get(channel)
        await service.hub.serve(ws, ip=_ip(ws), key=channel, hello=[last] if last else [])

    endpoint.__name__ = f"ws_{channel}"
    router.add_api_websocket_route(f"/ws/{channel}", endpoint)


for _channel in PUBLIC:
    _public(_channel)


@router.websocket("/ws/miner_stats")
async def ws_miner_stats(ws: WebSocket) -> None:
    """The miner's stats now, then again after every block that changes them."""
    try:
        address = validate_address(ws.query_params.get("address", ""))
    except AddressError as exc:
        await refuse(ws, CLOSE_BAD_REQUEST, f"address: {exc}")
        return
    runtime = _runtime(ws)
    service = explorer_service(runtime)
    async with runtime.db.read() as s:
        hello = encode("miner_stats", "miner_stats", await miner_stats(s, address))
    await service.hub.serve(ws, ip=_ip(ws), key=f"miner_stats:{address}", hello=[hello])


async def _principal(ws: WebSocket, runtime: Runtime) -> Principal:
    """The caller, from `Authorization: Bearer`, `X-API-Key`, `?token=` or the session
    cookie (a browser's cookie only from an allowed origin: no cross-site socket hijack)."""
    token = ws.headers.get("x-api-key", "").strip()
    scheme, _, bearer = ws.headers.get("authorization", "").partition(" ")
    if not token and scheme.lower() == "bearer":
        token = bearer.strip()
    if not token:
        token = ws.query_params.get("token", "").strip()
    if not token:
        token = ws.cookies.get(ACCESS_COOKIE, "")
        origin = ws.headers.get("origin")
        if token and origin and not _same_origin(origin, ws, runtime):
            raise Unauthorized("the session cookie is not accepted from this origin")
    if not token:
        raise Unauthorized("no credentials: pass ?token=<API key or access token>")
    if token.startswith(keys.PREFIX):
        return await keys.authenticate(runtime, token)
    async with runtime.db.read() as s:
        return await auth.session_principal(
            s, settings=runtime.settings, jwt_key=runtime.jwt_key, token=token
        )


def _same_origin(origin: str, ws: WebSocket, runtime: Runtime) -> bool:
    host = ws.headers.get("host", "")
    return origin in runtime.settings.cors_origins or origin.split("://", 1)[-1] == host


@router.websocket("/ws/usage")
async def ws_usage(ws: WebSocket) -> None:
    """Private: the caller's balance and charges (token auth; scope `read`)."""
    runtime = _runtime(ws)
    try:
        principal = await _principal(ws, runtime)
    except BackendError as exc:
        await refuse(ws, CLOSE_UNAUTHORIZED, exc.message)
        return
    if "read" not in principal.scopes:
        await refuse(ws, CLOSE_UNAUTHORIZED, "this key lacks the 'read' scope")
        return
    service = explorer_service(runtime)
    await service.hub.serve(
        ws,
        ip=_ip(ws),
        key=f"usage:{principal.account_id}",
        hello=[],
        producer=usage_producer(runtime.db, principal.account_id),
    )
