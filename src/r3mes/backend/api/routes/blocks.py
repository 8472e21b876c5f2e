"""`GET /api/blocks`, `/api/blocks/{height}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import CursorArg, LimitArg, cached_json
from r3mes.backend.services import explorer

router = APIRouter(prefix="/api/blocks", tags=["explorer"])


@router.get("")
async def blocks(
    request: Request, runtime: RuntimeDep, limit: LimitArg = 50, cursor: CursorArg = None
) -> Response:
    """Blocks newest first."""
    return await cached_json(
        request, runtime, lambda s: explorer.blocks(s, limit=limit, cursor=cursor)
    )


@router.get("/{height}")
async def block(
    request: Request, runtime: RuntimeDep, height: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> Response:
    """One block with its transactions."""
    return await cached_json(request, runtime, lambda s: explorer.block(s, height))
