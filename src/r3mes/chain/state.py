"""Ledger state: frozen records in sorted-by-key maps, canonical encoding and the app hash.

A `State` is never changed in place by the consensus code's callers: `apply_block` works on
an `overlay()` (ChainMaps over the parent's dicts) and returns a flattened new State. The
app hash is SHA-256 of the canonical JSON encoding (sorted keys, integers only, versioned).
"""

from __future__ import annotations

import hashlib
import json
from collections import ChainMap
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from r3mes.chain.errors import StoreError
from r3mes.chain.genesis import Genesis, Params
from r3mes.chain.msgs import ArtifactSpec

STATE_VERSION = 1
TIERS = ((1000, "diamond"), (500, "platinum"), (200, "gold"), (50, "silver"))


def tier(reputation: int) -> str:
    """Reputation tier: diamond >= 1000, platinum >= 500, gold >= 200, silver >= 50, else bronze."""
    for threshold, name in TIERS:
        if reputation >= threshold:
            return name
    return "bronze"


@dataclass(frozen=True)
class Account:
    address: str
    number: int
    balance: int = 0
    sequence: int = 0
    pubkey: str = ""
    reputation: int = 0
    earned: int = 0
    """Total credits ever minted to this account as rewards."""
    slashed: int = 0


@dataclass(frozen=True)
class Node:
    address: str
    role: str
    endpoint: str
    stake: int
    registered_height: int
    active: bool = True
    last_heartbeat_ms: int = 0
    adapter_version: int = 0
    capacity: int = 0


@dataclass(frozen=True)
class Round:
    number: int
    open_height: int
    close_height: int
    """Last height that belongs to this round."""
    seed: str
    status: str = "open"
    base_model_id: str = ""
    base_model_version: int = 0
    base_model_cid: str = ""
    dataset_id: str = ""
    dataset_version: int = 0
    dataset_cid: str = ""
    adapter_version: int = 0
    adapter_cid: str = ""
    claims: tuple[tuple[int, str], ...] = ()
    """(shard, miner) pairs sorted by shard."""
    proposed_version: int = 0


@dataclass(frozen=True)
class Attestation:
    validator: str
    verdict: str
    distance_ppm: int
    height: int


@dataclass(frozen=True)
class Submission:
    id: int
    round: int
    shard: int
    miner: str
    cid: str
    digest: str
    height: int
    status: str = "pending"
    attestations: tuple[Attestation, ...] = ()


@dataclass(frozen=True)
class ArtifactRecord:
    spec: ArtifactSpec
    status: str
    registered_by: str
    registered_height: int
    approved_height: int = 0

    @property
    def key(self) -> str:
        return artifact_key(self.spec.kind, self.spec.id, self.spec.version)


def artifact_key(kind: str, artifact_id: str, version: int) -> str:
    return f"{kind}/{artifact_id}/{version:020d}"


def node_key(role: str, address: str) -> str:
    return f"{role}/{address}"


@dataclass
class State:
    """The whole ledger state after block `height` (0 = genesis)."""

    chain_id: str
    params: Params
    height: int = 0
    last_block_hash: str = ""
    last_block_time_ms: int = 0
    supply: int = 0
    minted: int = 0
    burned: int = 0
    next_account_number: int = 1
    next_submission_id: int = 1
    accounts: MutableMapping[str, Account] = field(default_factory=dict)
    nodes: MutableMapping[str, Node] = field(default_factory=dict)
    rounds: MutableMapping[int, Round] = field(default_factory=dict)
    submissions: MutableMapping[int, Submission] = field(default_factory=dict)
    artifacts: MutableMapping[str, ArtifactRecord] = field(default_factory=dict)
    active: MutableMapping[str, str] = field(default_factory=dict)
    """kind -> artifact key of the artifact rounds currently use."""

    _MAPS = ("accounts", "nodes", "rounds", "submissions", "artifacts", "active")

    def overlay(self) -> State:
        """A cheap child state whose writes do not touch this one until `absorb`ed."""
        maps: dict[str, Any] = {name: ChainMap({}, getattr(self, name)) for name in self._MAPS}
        return replace(self, **maps)

    def absorb(self, child: State) -> None:
        """Commit an overlay's writes into this state."""
        for f in fields(self):
            if f.name in self._MAPS:
                writes = getattr(child, f.name).maps[0]
                getattr(self, f.name).update(writes)
            else:
                setattr(self, f.name, getattr(child, f.name))

    def flattened(self) -> State:
        """A new State with plain dicts holding every entry (parents untouched)."""
        maps: dict[str, Any] = {name: dict(getattr(self, name)) for name in self._MAPS}
        return replace(self, **maps)

    @property
    def current_round(self) -> int:
        """Round of the next block (or of the last one, before any block: round 1)."""
        return max(self.height - 1, 0) // self.params.round_length + 1

    def encode(self) -> bytes:
        """Canonical bytes of the whole state (the app hash preimage)."""
        return json.dumps(state_to_obj(self), sort_keys=True, separators=(",", ":")).encode()

    def app_hash(self) -> str:
        return hashlib.sha256(self.encode()).hexdigest()


def state_to_obj(state: State) -> dict[str, Any]:
    obj: dict[str, Any] = {"version": STATE_VERSION}
    for f in fields(state):
        value = getattr(state, f.name)
        if f.name in State._MAPS:
            obj[f.name] = {str(k): _record(v) for k, v in sorted(value.items())}
        elif f.name == "params":
            obj[f.name] = asdict(value)
        else:
            obj[f.name] = value
    return obj


def _record(value: Any) -> Any:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


def _load_map(raw: dict[str, Any], build: Any, key: Any = str) -> dict[Any, Any]:
    return {key(k): build(v) for k, v in raw.items()}


def _spec(doc: dict[str, Any]) -> ArtifactSpec:
    return ArtifactSpec(**{**doc, "target_modules": tuple(doc["target_modules"])})


def state_from_obj(obj: dict[str, Any]) -> State:
    """Inverse of `state_to_obj`; raises StoreError on anything malformed."""
    try:
        if obj.get("version") != STATE_VERSION:
            raise StoreError(f"stored state version {obj.get('version')} is not {STATE_VERSION}")
        scalars = {
            f.name: obj[f.name]
            for f in fields(State)
            if f.name not in State._MAPS and f.name != "params"
        }
        return State(
            **scalars,
            params=Params(**obj["params"]),
            accounts=_load_map(obj["accounts"], lambda d: Account(**d)),
            nodes=_load_map(obj["nodes"], lambda d: Node(**d)),
            rounds=_load_map(
                obj["rounds"],
                lambda d: Round(**{**d, "claims": tuple(tuple(c) for c in d["claims"])}),
                int,
            ),
            submissions=_load_map(
                obj["submissions"],
                lambda d: Submission(
                    **{**d, "attestations": tuple(Attestation(**a) for a in d["attestations"])}
                ),
                int,
            ),
            artifacts=_load_map(
                obj["artifacts"], lambda d: ArtifactRecord(**{**d, "spec": _spec(d["spec"])})
            ),
            active=dict(obj["active"]),
        )
    except StoreError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"stored state is malformed: {exc}") from exc


def decode_state(data: bytes) -> State:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"stored state is not JSON: {exc}") from exc
    return state_from_obj(obj)


def genesis_state(genesis: Genesis) -> State:
    """The state at height 0: funded accounts, approved genesis artifacts, no rounds yet."""
    state = State(
        chain_id=genesis.chain_id,
        params=genesis.params,
        last_block_hash=genesis.hash,
        last_block_time_ms=genesis.genesis_time_ms,
    )
    for acc in genesis.accounts:
        state.accounts[acc.address] = Account(
            address=acc.address, number=state.next_account_number, balance=acc.balance
        )
        state.next_account_number += 1
        state.supply += acc.balance
    for spec in genesis.artifacts:
        record = ArtifactRecord(spec=spec, status="approved", registered_by="", registered_height=0)
        state.artifacts[record.key] = record
        state.active[spec.kind] = record.key
    return state
