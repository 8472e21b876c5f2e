"""`GET /api/serving` (serving nodes: liveness, load, served tokens) and `GET /api/nodes`."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import CursorArg, LimitArg, cached_json
from r3mes.backend.api.routes.params import AddressPath
from r3mes.backend.services import explorer, leaderboard

router = APIRouter(prefix="/api", tags=["explorer"])


@router.get("/serving")
async def serving(request: Request, runtime: RuntimeDep) -> Response:
    return await cached_json(request, runtime, leaderboard.serving)


@router.get("/nodes")
async def nodes(
    request: Request,
    runtime: RuntimeDep,
    role: Literal["miner", "validator", "proposer", "serving"] | None = None,
) -> Response:
    """Every registered node (active or not), as the ledger's /nodes?include_inactive=true."""
    return await cached_json(request, runtime, lambda s: explorer.nodes(s, role))


@router.get("/nodes/{address}/events")
async def node_events(
    request: Request,
    runtime: RuntimeDep,
    address: AddressPath,
    limit: LimitArg = 50,
    cursor: CursorArg = None,
) -> Response:
    """The address's node registrations, heartbeats and staleness, newest first."""
    return await cached_json(
        request,
        runtime,
        lambda s: explorer.node_events(s, address, limit=limit, cursor=cursor),
    )
