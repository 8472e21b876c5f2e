"""`GET /api/leaderboard/miners` and `/api/leaderboard/validators` (cursor-paginated)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import CursorArg, LimitArg, RoundsArg, cached_json
from r3mes.backend.services import leaderboard

router = APIRouter(prefix="/api/leaderboard", tags=["explorer"])


@router.get("/miners")
async def miners(
    request: Request,
    runtime: RuntimeDep,
    limit: LimitArg = 50,
    cursor: CursorArg = None,
    rounds: RoundsArg = 10,
) -> Response:
    """Miners by reputation then earnings: tier, verified rate, stake, trend over `rounds`."""
    return await cached_json(
        request,
        runtime,
        lambda s: leaderboard.miners(s, limit=limit, cursor=cursor, rounds=rounds),
    )


@router.get("/validators")
async def validators(
    request: Request,
    runtime: RuntimeDep,
    limit: LimitArg = 50,
    cursor: CursorArg = None,
    rounds: RoundsArg = 10,
) -> Response:
    """Validators by agreed attestations: trust score, attestations, uptime, stake."""
    return await cached_json(
        request,
        runtime,
        lambda s: leaderboard.validators(s, limit=limit, cursor=cursor, rounds=rounds),
    )
