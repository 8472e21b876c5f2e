"""ABCI query: path "/remes.remes.v1.Query/<Method>", protobuf request, JSON document reply.

The reply value is a serialised QueryJsonResponse whose `json` is the REST document, so
the same views serve REST, abci_query and (later) a CometBFT ABCI Query handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError, Message

from r3mes.chain import views
from r3mes.chain.proto.gen.remes.remes.v1 import query_pb2
from r3mes.chain.state import State

PATH_PREFIX = "/remes.remes.v1.Query/"


def _params(state: State, req: Any) -> Any:
    return {"params": views.params_json(state)}


def _round(state: State, req: Any) -> Any:
    return {"round": views.round_json(views.get_round(state, req.round or None), state)}


def _tasks(state: State, req: Any) -> Any:
    return views.tasks_json(state, req.round or None)


def _submissions(state: State, req: Any) -> Any:
    return {"submissions": views.submissions_json(state, req.round or None)}


def _nodes(state: State, req: Any) -> Any:
    return {"nodes": views.nodes_json(state, req.role or None, False)}


def _artifacts(state: State, req: Any) -> Any:
    return {"artifacts": views.artifacts_json(state, req.kind or None, req.status or None)}


def _leaderboard(state: State, req: Any) -> Any:
    return {"leaderboard": views.leaderboard_json(state, req.limit or 100)}


def _account(state: State, req: Any) -> Any:
    return {"account": views.account_json(state, req.address)}


def _submission(state: State, req: Any) -> Any:
    sub = state.submissions.get(req.id)
    if sub is None:
        raise views.QueryError(f"no submission {req.id}", status=404)
    return {"submission": views.submission_json(sub)}


def _proposal(state: State, req: Any) -> Any:
    return {"proposal": views.proposal_json(state, req.round)}


def _dispute(state: State, req: Any) -> Any:
    return {"dispute": views.dispute_json(state, req.id)}


def _disputes(state: State, req: Any) -> Any:
    return {"disputes": views.open_disputes_json(state)}


def _stake(state: State, req: Any) -> Any:
    return {"stake": views.stake_json(state, req.address)}


ROUTES: dict[str, tuple[type[Message], Callable[[State, Any], Any]]] = {
    "Params": (query_pb2.QueryParamsRequest, _params),
    "Round": (query_pb2.QueryRoundRequest, _round),
    "Tasks": (query_pb2.QueryTasksRequest, _tasks),
    "Submissions": (query_pb2.QuerySubmissionsRequest, _submissions),
    "Nodes": (query_pb2.QueryNodesRequest, _nodes),
    "Artifacts": (query_pb2.QueryArtifactsRequest, _artifacts),
    "Leaderboard": (query_pb2.QueryLeaderboardRequest, _leaderboard),
    "Account": (query_pb2.QueryAccountRequest, _account),
    "Submission": (query_pb2.QuerySubmissionRequest, _submission),
    "Proposal": (query_pb2.QueryProposalRequest, _proposal),
    "Dispute": (query_pb2.QueryDisputeRequest, _dispute),
    "Disputes": (query_pb2.QueryDisputesRequest, _disputes),
    "Stake": (query_pb2.QueryStakeRequest, _stake),
}


def query(state: State, path: str, data: bytes) -> bytes:
    """Answer one ABCI query; raises views.QueryError for unknown paths or bad requests."""
    method = path.removeprefix(PATH_PREFIX) if path.startswith(PATH_PREFIX) else ""
    if method not in ROUTES:
        raise views.QueryError(f"unknown query path {path!r}; use {PATH_PREFIX}<Method>")
    request_type, handler = ROUTES[method]
    try:
        request = request_type.FromString(data)
    except (DecodeError, ValueError) as exc:
        raise views.QueryError(f"malformed {method} request: {exc}") from exc
    doc = handler(state, request)
    reply = query_pb2.QueryJsonResponse(json=json.dumps(doc, sort_keys=True))
    return bytes(reply.SerializeToString(deterministic=True))
