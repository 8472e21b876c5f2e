"""`GET /api/rounds`, `/api/rounds/{n}`, `/api/submissions`, `/api/submissions/{id}`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import CursorArg, LimitArg, cached_json
from r3mes.backend.errors import InvalidRequest
from r3mes.backend.services import explorer, quorum_views
from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError

router = APIRouter(prefix="/api", tags=["explorer"])
Number = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/rounds")
async def rounds(
    request: Request, runtime: RuntimeDep, limit: LimitArg = 50, cursor: CursorArg = None
) -> Response:
    """Rounds newest first (as the ledger's /rounds, plus submission counts)."""
    return await cached_json(
        request, runtime, lambda s: explorer.rounds(s, limit=limit, cursor=cursor)
    )


@router.get("/rounds/{number}")
async def round_(request: Request, runtime: RuntimeDep, number: Number) -> Response:
    """One round with its tasks (shards and who claimed them), its submissions and its
    adapter proposals (`proposal`: the latest, with its status and verdicts)."""
    return await cached_json(request, runtime, lambda s: quorum_views.round_detail(s, number))


@router.get("/submissions")
async def submissions(
    request: Request,
    runtime: RuntimeDep,
    limit: LimitArg = 50,
    cursor: CursorArg = None,
    round: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    miner: Annotated[str | None, Query(max_length=128)] = None,
    status: Literal["pending", "verified", "rejected"] | None = None,
) -> Response:
    """Submissions newest first, optionally of one round, one miner and/or one status."""
    if miner is not None:
        try:
            miner = validate_address(miner)
        except AddressError as exc:
            raise InvalidRequest(f"miner: {exc}") from exc
    return await cached_json(
        request,
        runtime,
        lambda s: explorer.submissions(
            s, limit=limit, cursor=cursor, round_number=round, miner=miner, status=status
        ),
    )


@router.get("/submissions/{sid}")
async def submission(request: Request, runtime: RuntimeDep, sid: Number) -> Response:
    return await cached_json(request, runtime, lambda s: explorer.submission(s, sid))
