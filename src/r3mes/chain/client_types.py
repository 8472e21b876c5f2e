"""The ledger's wire: REST paths and the typed answers BlockchainClient parses from them.

Both sides import this module (the server's routes and the client), so it must stay light:
importing it, or the client, never loads FastAPI, the engine, the store or the state machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from r3mes.chain.errors import ClientError

T = TypeVar("T")

PREFIX = "/remes/remes/v1"
"""Where the REST queries live (Cosmos gRPC-gateway style paths)."""


def from_json(cls: type[T], doc: Any) -> T:
    """Build dataclass `cls` from a JSON object, ignoring unknown keys."""
    if not isinstance(doc, dict):
        raise ClientError(f"node answered a malformed {cls.__name__}: not an object")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in doc.items() if k in names})
    except TypeError as exc:
        raise ClientError(f"node answered a malformed {cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class ChainStatus:
    chain_id: str
    height: int
    app_hash: str
    block_hash: str
    block_time: str


@dataclass(frozen=True)
class AccountInfo:
    address: str
    exists: bool
    account_number: int
    sequence: int
    balance: int
    pubkey: str
    reputation: int
    tier: str
    earned: int
    slashed: int
    roles: list[str]


@dataclass(frozen=True)
class RoundInfo:
    number: int
    open_height: int
    close_height: int
    seed: str
    status: str
    base_model_id: str
    base_model_version: int
    base_model_cid: str
    dataset_id: str
    dataset_version: int
    dataset_cid: str
    adapter_version: int
    adapter_cid: str
    claims: list[dict[str, Any]]
    proposed_version: int
    shards_per_round: int
    pow_difficulty: int


@dataclass(frozen=True)
class SubmissionInfo:
    id: int
    round: int
    shard: int
    miner: str
    cid: str
    digest: str
    height: int
    status: str
    attestations: list[dict[str, Any]]
    residual_cid: str = ""
    residual_digest: str = ""
    base_submission_id: int = 0
    trace_cid: str = ""
    trace_root: str = ""
    assigned: list[str] = field(default_factory=list)
    settled_height: int = 0


@dataclass(frozen=True)
class ProposalInfo:
    """A proposed adapter version under review (checked merge)."""

    round: int
    proposer: str
    version: int
    cid: str
    sha256: str
    parent_version: int
    submission_ids: list[int]
    height: int
    assigned: list[str]
    attestations: list[dict[str, Any]]
    status: str


@dataclass(frozen=True)
class NodeInfo:
    address: str
    role: str
    endpoint: str
    stake: int
    registered_height: int
    active: bool
    last_heartbeat_ms: int
    adapter_version: int
    capacity: int


@dataclass(frozen=True)
class LeaderboardEntry:
    rank: int
    address: str
    reputation: int
    tier: str
    earned: int
    verified_submissions: int


@dataclass(frozen=True)
class BroadcastResult:
    """Outcome of a broadcast; `height` is 0 until the tx is committed."""

    hash: str
    code: int
    log: str
    height: int = 0
    events: tuple[dict[str, Any], ...] = ()
