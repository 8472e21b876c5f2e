"""`GET /api/network/stats`: the network at a glance."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import cached_json
from r3mes.backend.services import leaderboard

router = APIRouter(prefix="/api/network", tags=["explorer"])


@router.get("/stats")
async def stats(request: Request, runtime: RuntimeDep) -> Response:
    """Height, round, active nodes per role, submissions, verified rate, credits, chat users."""
    return await cached_json(request, runtime, leaderboard.network_stats)
