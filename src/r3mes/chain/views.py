"""JSON views of ledger state: the documents REST, abci_query and the client share.

Field names here are a public contract (the registry, nodes and backend read them).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from r3mes.chain.artifact_record import ArtifactRecord as ListedArtifact
from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError, ChainError
from r3mes.chain.state import ArtifactRecord, Round, State, Submission, tier
from r3mes.chain.vocab import KINDS, ROLES


class QueryError(ChainError):
    """A query's arguments are invalid (HTTP 400) or name nothing (HTTP 404)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def params_json(state: State) -> dict[str, Any]:
    return {"chain_id": state.chain_id, **asdict(state.params)}


def round_json(rnd: Round, state: State) -> dict[str, Any]:
    doc = asdict(rnd)
    doc["claims"] = [{"shard": s, "miner": m} for s, m in rnd.claims]
    doc["shards_per_round"] = state.params.shards_per_round
    doc["pow_difficulty"] = state.params.pow_difficulty
    return doc


def get_round(state: State, number: int | None) -> Round:
    """Round `number`, or the current round when None/0."""
    key = number or state.current_round
    rnd = state.rounds.get(key)
    if rnd is None:
        raise QueryError(f"round {key} does not exist yet", status=404)
    return rnd


def tasks_json(state: State, number: int | None) -> dict[str, Any]:
    rnd = get_round(state, number)
    claimed = dict(rnd.claims)
    shards = [
        {"shard": i, "claimed_by": claimed.get(i)} for i in range(state.params.shards_per_round)
    ]
    return {"round": rnd.number, "seed": rnd.seed, "status": rnd.status, "shards": shards}


def submission_json(sub: Submission) -> dict[str, Any]:
    return asdict(sub)


def submissions_json(state: State, round_number: int | None) -> list[dict[str, Any]]:
    subs = sorted(state.submissions.values(), key=lambda s: s.id)
    return [submission_json(s) for s in subs if round_number is None or s.round == round_number]


def nodes_json(state: State, role: str | None, include_inactive: bool) -> list[dict[str, Any]]:
    if role is not None and role not in ROLES:
        raise QueryError(f"role must be one of {ROLES}")
    out = []
    for key in sorted(state.nodes):
        node = state.nodes[key]
        if (role is None or node.role == role) and (include_inactive or node.active):
            out.append(asdict(node))
    return out


def record_of(entry: ArtifactRecord) -> ListedArtifact:
    """The one conversion from the ledger's consensus entry to the artifact record every
    node works with (`r3mes.chain.artifact_record`)."""
    return ListedArtifact.from_spec(
        entry.spec, status=entry.status, approved_height=entry.approved_height
    )


def artifact_json(entry: ArtifactRecord) -> dict[str, Any]:
    return record_of(entry).to_ledger()


def artifacts_json(state: State, kind: str | None, status: str | None) -> list[dict[str, Any]]:
    """Artifact records sorted by (kind, id, version); status defaults to 'approved'."""
    if kind is not None and kind not in KINDS:
        raise QueryError(f"kind must be one of {KINDS}")
    status = status or "approved"
    if status not in ("approved", "pending", "all"):
        raise QueryError("status must be approved, pending or all")
    return [
        artifact_json(r)
        for _, r in sorted(state.artifacts.items())
        if (kind is None or r.spec.kind == kind) and (status == "all" or r.status == status)
    ]


def leaderboard_json(state: State, limit: int) -> list[dict[str, Any]]:
    if not 1 <= limit <= 1000:
        raise QueryError("limit must be in [1, 1000]")
    verified: dict[str, int] = {}
    for sub in state.submissions.values():
        if sub.status == "verified":
            verified[sub.miner] = verified.get(sub.miner, 0) + 1
    ranked = sorted(state.accounts.values(), key=lambda a: (-a.reputation, -a.earned, a.address))
    ranked = [a for a in ranked if a.reputation or a.earned][:limit]
    return [
        {
            "rank": i + 1,
            "address": a.address,
            "reputation": a.reputation,
            "tier": tier(a.reputation),
            "earned": a.earned,
            "verified_submissions": verified.get(a.address, 0),
        }
        for i, a in enumerate(ranked)
    ]


def account_json(state: State, address: str) -> dict[str, Any]:
    """An account; an unknown address answers exists=false with account_number 0."""
    try:
        address = validate_address(address)
    except AddressError as exc:
        raise QueryError(str(exc)) from exc
    acc = state.accounts.get(address)
    roles = sorted(n.role for n in state.nodes.values() if n.address == address)
    if acc is None:
        return {
            "address": address,
            "exists": False,
            "account_number": 0,
            "sequence": 0,
            "balance": 0,
            "pubkey": "",
            "reputation": 0,
            "tier": tier(0),
            "earned": 0,
            "slashed": 0,
            "roles": roles,
        }
    return {
        "address": address,
        "exists": True,
        "account_number": acc.number,
        "sequence": acc.sequence,
        "balance": acc.balance,
        "pubkey": acc.pubkey,
        "reputation": acc.reputation,
        "tier": tier(acc.reputation),
        "earned": acc.earned,
        "slashed": acc.slashed,
        "roles": roles,
    }


def stake_json(state: State, address: str) -> dict[str, Any]:
    """What `address` has at stake: bonded per role and still unbonding (slashable)."""
    try:
        address = validate_address(address)
    except AddressError as exc:
        raise QueryError(str(exc)) from exc
    nodes = sorted((n for n in state.nodes.values() if n.address == address), key=lambda n: n.role)
    pending = state.unbonding.get(address)
    entries = pending.entries if pending else ()
    return {
        "address": address,
        "bonded": [{"role": n.role, "stake": n.stake, "active": n.active} for n in nodes],
        "unbonding": [asdict(e) for e in entries],
        "total": sum(n.stake for n in nodes) + sum(e.amount for e in entries),
    }


def proposal_json(state: State, round_number: int) -> dict[str, Any]:
    """The adapter version proposed for round `round_number` and its validators' verdicts."""
    prop = state.proposals.get(round_number)
    if prop is None:
        raise QueryError(f"no proposal for round {round_number}", status=404)
    doc = asdict(prop)
    doc["version"] = prop.spec.version
    doc["cid"] = prop.spec.cid
    doc["sha256"] = prop.spec.sha256
    return doc


def dispute_json(state: State, dispute_id: int) -> dict[str, Any]:
    """A dispute (its id is the submission's): where the bisection stands, or its outcome."""
    d = state.disputes.get(dispute_id)
    if d is None:
        raise QueryError(f"no dispute {dispute_id}", status=404)
    doc = asdict(d)
    doc["id"] = d.submission_id
    doc["open"] = d.status != "resolved"
    return doc


def open_disputes_json(state: State) -> list[dict[str, Any]]:
    """Every dispute not resolved yet, oldest first (what parties and referees poll)."""
    return [dispute_json(state, sid) for sid in state.open_disputes]
