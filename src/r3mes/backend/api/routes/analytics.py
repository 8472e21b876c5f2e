"""`GET /api/analytics?days=N`: chat per day and model, network per day."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import cached_json
from r3mes.backend.services import leaderboard

router = APIRouter(prefix="/api", tags=["explorer"])


@router.get("/analytics")
async def analytics(
    request: Request, runtime: RuntimeDep, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> Response:
    return await cached_json(request, runtime, lambda s: leaderboard.analytics(s, days=days))
