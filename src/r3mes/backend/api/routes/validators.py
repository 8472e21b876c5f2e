"""`GET /api/validators/{address}`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import RoundsArg, cached_json
from r3mes.backend.api.routes.params import AddressPath
from r3mes.backend.services import leaderboard

router = APIRouter(prefix="/api/validators", tags=["explorer"])


@router.get("/{address}")
async def validator(
    request: Request, runtime: RuntimeDep, address: AddressPath, rounds: RoundsArg = 10
) -> Response:
    """A validator's account, node, trust score, uptime and recent attestations."""
    return await cached_json(
        request, runtime, lambda s: leaderboard.validator(s, address, rounds=rounds)
    )
