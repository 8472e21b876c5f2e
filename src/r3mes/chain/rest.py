"""REST queries under /remes/remes/v1/... (Cosmos gRPC-gateway style paths)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from r3mes.chain import views
from r3mes.chain.client_types import PREFIX
from r3mes.chain.engine import DevnetEngine
from r3mes.chain.state import State


def get_state(request: Request) -> State:
    engine: DevnetEngine = request.app.state.engine
    return engine.state


StateDep = Annotated[State, Depends(get_state)]
RoundArg = Annotated[int | None, Query(ge=1, le=2**63)]


def rest_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["remes"])

    @router.get("/params")
    def params(state: StateDep) -> dict[str, Any]:
        return {"params": views.params_json(state)}

    @router.get("/rounds")
    def rounds(state: StateDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        latest = sorted(state.rounds, reverse=True)[:limit]
        return {
            "current_round": state.current_round,
            "height": state.height,
            "rounds": [views.round_json(state.rounds[n], state) for n in latest],
        }

    @router.get("/rounds/current")
    def current_round(state: StateDep) -> dict[str, Any]:
        return {"round": views.round_json(views.get_round(state, None), state)}

    @router.get("/rounds/{number}")
    def round_(state: StateDep, number: int) -> dict[str, Any]:
        if not 1 <= number < 2**63:
            raise views.QueryError("round number must be >= 1")
        return {"round": views.round_json(views.get_round(state, number), state)}

    @router.get("/tasks")
    def tasks(state: StateDep, round: RoundArg = None) -> dict[str, Any]:
        return views.tasks_json(state, round)

    @router.get("/submissions")
    def submissions(state: StateDep, round: RoundArg = None) -> dict[str, Any]:
        return {"submissions": views.submissions_json(state, round)}

    @router.get("/submissions/{sid}")
    def submission(state: StateDep, sid: int) -> dict[str, Any]:
        sub = state.submissions.get(sid)
        if sub is None:
            raise views.QueryError(f"no submission {sid}", status=404)
        return {"submission": views.submission_json(sub)}

    @router.get("/nodes")
    def nodes(
        state: StateDep, role: str | None = None, include_inactive: bool = False
    ) -> dict[str, Any]:
        return {"nodes": views.nodes_json(state, role, include_inactive)}

    @router.get("/artifacts")
    def artifacts(
        state: StateDep, kind: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        return {"artifacts": views.artifacts_json(state, kind, status)}

    @router.get("/leaderboard")
    def leaderboard(
        state: StateDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        return {"leaderboard": views.leaderboard_json(state, limit)}

    @router.get("/accounts/{address}")
    def account(state: StateDep, address: str) -> dict[str, Any]:
        return {"account": views.account_json(state, address)}

    @router.get("/proposals/{round_number}")
    def proposal(state: StateDep, round_number: int) -> dict[str, Any]:
        return {"proposal": views.proposal_json(state, round_number)}

    @router.get("/disputes")
    def disputes(state: StateDep) -> dict[str, Any]:
        return {"disputes": views.open_disputes_json(state)}

    @router.get("/disputes/{dispute_id}")
    def dispute(state: StateDep, dispute_id: int) -> dict[str, Any]:
        return {"dispute": views.dispute_json(state, dispute_id)}

    @router.get("/stake/{address}")
    def stake(state: StateDep, address: str) -> dict[str, Any]:
        return {"stake": views.stake_json(state, address)}

    return router
