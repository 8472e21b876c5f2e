"""`GET /api/adapters` (versions, lineage, held-out loss vs base) and `/api/artifacts`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import CursorArg, LimitArg, cached_json
from r3mes.backend.services import explorer

router = APIRouter(prefix="/api", tags=["explorer"])


@router.get("/adapters")
async def adapters(
    request: Request, runtime: RuntimeDep, limit: LimitArg = 50, cursor: CursorArg = None
) -> Response:
    return await cached_json(
        request, runtime, lambda s: explorer.adapters(s, limit=limit, cursor=cursor)
    )


@router.get("/artifacts")
async def artifacts(request: Request, runtime: RuntimeDep) -> Response:
    """Every artifact record (models, datasets, adapters; pending and approved)."""
    return await cached_json(request, runtime, explorer.artifacts)
