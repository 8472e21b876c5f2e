"""`GET /api/proposals`, `/api/disputes`, `/api/disputes/{id}`, `/api/stake/{address}`: the
checks around the work (merges, disputes, stake that can still be slashed)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import CursorArg, LimitArg, cached_json
from r3mes.backend.api.routes.params import AddressPath
from r3mes.backend.errors import InvalidRequest
from r3mes.backend.services import quorum_views
from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError
from r3mes.chain.vocab import ProposalStatus

router = APIRouter(prefix="/api", tags=["explorer"])
Number = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/proposals")
async def proposals(
    request: Request,
    runtime: RuntimeDep,
    limit: LimitArg = 50,
    cursor: CursorArg = None,
    status: ProposalStatus | None = None,
    proposer: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    """Adapter merge proposals of every round, newest first, with their validators' verdicts;
    optionally one status and/or one proposer's."""
    address = None if proposer is None else _address("proposer", proposer)
    return await cached_json(
        request,
        runtime,
        lambda s: quorum_views.proposals(
            s, limit=limit, cursor=cursor, status=status, proposer=address
        ),
    )


@router.get("/disputes")
async def disputes(
    request: Request,
    runtime: RuntimeDep,
    limit: LimitArg = 50,
    cursor: CursorArg = None,
    status: Literal["open", "resolved"] | None = None,
    party: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    """Disputes newest first, optionally open/resolved only and/or with one party."""
    address = None if party is None else _address("party", party)
    return await cached_json(
        request,
        runtime,
        lambda s: quorum_views.disputes(
            s, limit=limit, cursor=cursor, status=status, party=address
        ),
    )


def _address(name: str, text: str) -> str:
    try:
        return validate_address(text)
    except AddressError as exc:
        raise InvalidRequest(f"{name}: {exc}") from exc


@router.get("/disputes/{dispute_id}")
async def dispute(request: Request, runtime: RuntimeDep, dispute_id: Number) -> Response:
    """One dispute (its id is the submission's): the bisection's state or its outcome."""
    return await cached_json(request, runtime, lambda s: quorum_views.dispute(s, dispute_id))


@router.get("/stake/{address}")
async def stake(request: Request, runtime: RuntimeDep, address: AddressPath) -> Response:
    """An address's stake: bonded per role, unbonding (still slashable), withdrawals."""
    return await cached_json(request, runtime, lambda s: quorum_views.stake(s, address))
