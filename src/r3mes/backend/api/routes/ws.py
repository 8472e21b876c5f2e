"""Websockets: public `/ws/blocks`, `/ws/network_status`, `/ws/miner_stats?address=`,
`/ws/training_metrics`, and the private `/ws/usage` (schema in docs/backend.md)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from r3mes.backend.runtime import Runtime
from r3mes.backend.services.live import explorer_service, miner_stats
from r3mes.backend.services.ws import CLOSE_BAD_REQUEST, encode
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
        await ws.close(code=CLOSE_BAD_REQUEST, reason=f"address: {exc}"[:120])
        return
    runtime = _runtime(ws)
    service = explorer_service(runtime)
    async with runtime.db.read() as s:
        hello = encode("miner_stats", "miner_stats", await miner_stats(s, address))
    await service.hub.serve(ws, ip=_ip(ws), key=f"miner_stats:{address}", hello=[hello])
