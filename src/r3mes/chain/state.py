"""Ledger state: frozen records in maps, their canonical entries and the app hash.

A committed `State` is frozen: `apply_block` works on its `overlay()`, a `WorkingState`
(ChainMaps over the parent's dicts), and `seal`s it into a new State sharing what did
not change. The state is a set of entries, one per
record (`accounts/<address>`, `rounds/<n>`, ...) plus `meta` for the scalars and params,
each as canonical JSON (sorted keys, integers only, versioned). The app hash is the root
of a sparse Merkle tree over those entries (r3mes.chain.commitment), updated per block for
the changed entries only; the store likewise writes only the changed rows.
"""

from __future__ import annotations

import json
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from r3mes.chain import commitment
from r3mes.chain.commitment import Tree
from r3mes.chain.errors import StoreError
from r3mes.chain.genesis import Genesis, Params
from r3mes.chain.msgs import ArtifactSpec
from r3mes.chain.vocab import (
    ArtifactStatus,
    DisputeStatus,
    ProposalStatus,
    Role,
    RoundStatus,
    SubmissionStatus,
    Verdict,
)

STATE_VERSION = 3
MAPS = (
    "accounts",
    "nodes",
    "rounds",
    "submissions",
    "artifacts",
    "active",
    "unbonding",
    "proposals",
    "disputes",
)
SCALARS = (
    "chain_id",
    "height",
    "last_block_hash",
    "last_block_time_ms",
    "supply",
    "minted",
    "burned",
    "next_account_number",
    "next_submission_id",
    "open_disputes",
)
META_KEY = "meta"
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
    role: Role
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
    status: RoundStatus = "open"
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
    first_submission_id: int = 0
    """Id the round's first submission got (or will get): a round's submissions have
    the ids first_submission_id .. next round's first_submission_id - 1."""


@dataclass(frozen=True)
class Attestation:
    validator: str
    verdict: Verdict
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
    status: SubmissionStatus = "pending"
    attestations: tuple[Attestation, ...] = ()
    residual_cid: str = ""
    residual_digest: str = ""
    base_submission_id: int = 0
    trace_cid: str = ""
    trace_root: str = ""
    assigned: tuple[str, ...] = ()
    """Validators the ledger assigned to judge it (sorted); empty until one is registered."""
    settled_height: int = 0
    """Height at which a quorum settled it (0 while pending)."""


@dataclass(frozen=True)
class UnbondingEntry:
    role: Role
    amount: int
    release_height: int
    """First height at which `Withdraw` pays it out; until then it can still be slashed."""


@dataclass(frozen=True)
class Unbonding:
    """An address's stake on its way out, oldest first."""

    address: str
    entries: tuple[UnbondingEntry, ...] = ()


@dataclass(frozen=True)
class Proposal:
    """A proposed adapter version, approved only when a quorum of the validators assigned
    to it re-merged the listed updates and found the proposer's bytes (checked merge)."""

    round: int
    proposer: str
    spec: ArtifactSpec
    parent_version: int
    submission_ids: tuple[int, ...]
    height: int
    assigned: tuple[str, ...] = ()
    attestations: tuple[Attestation, ...] = ()
    status: ProposalStatus = "pending"


@dataclass(frozen=True)
class Dispute:
    """A bisection over one submission's training steps (see r3mes.chain.disputes)."""

    submission_id: int
    claimant: str
    """Says the work is right (the miner, or an accepting validator)."""
    respondent: str
    steps: int
    lo: int
    """Both sides agree on the state after `lo` steps (digest `lo_digest`)."""
    hi: int
    """They differ after `hi` steps (`claimant_hi` vs `respondent_hi`)."""
    lo_digest: str
    claimant_hi: str
    respondent_hi: str
    query: int
    """The step whose digests the parties post next (`steps`: the final ones)."""
    deadline_height: int
    opened_height: int
    claimant_mid: str = ""
    respondent_mid: str = ""
    rounds: int = 0
    """Halvings so far: at most ceil(log2(steps))."""
    status: DisputeStatus = "bisecting"
    referees: tuple[str, ...] = ()
    lo_cid: str = ""
    """CID of the agreed checkpoint at `lo` the referees start from."""
    votes: tuple[tuple[str, str], ...] = ()
    """(referee, digest after the one step)."""
    winner: str = ""
    """"claimant", "respondent", "neither" (referees matched no side) or "none"."""


@dataclass(frozen=True)
class ArtifactRecord:
    spec: ArtifactSpec
    status: ArtifactStatus
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


class _Unbuilt:
    """Marks a State whose commitment has not been computed yet."""


_UNBUILT = _Unbuilt()


@dataclass(frozen=True)
class State:
    """The whole committed ledger state after block `height` (0 = genesis); frozen.

    Blocks never write to a State: they write through a `WorkingState` from `overlay()`,
    which `seal` turns into the next State, sharing the maps (and commitment subtrees)
    the block did not change.
    """

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
    open_disputes: tuple[int, ...] = ()
    """Ids of the disputes not resolved yet (the end-block deadline sweep reads only these)."""
    accounts: Mapping[str, Account] = field(default_factory=dict)
    nodes: Mapping[str, Node] = field(default_factory=dict)
    rounds: Mapping[int, Round] = field(default_factory=dict)
    submissions: Mapping[int, Submission] = field(default_factory=dict)
    artifacts: Mapping[str, ArtifactRecord] = field(default_factory=dict)
    active: Mapping[str, str] = field(default_factory=dict)
    """kind -> artifact key of the artifact rounds currently use."""
    unbonding: Mapping[str, Unbonding] = field(default_factory=dict)
    """address -> its unbonding stake."""
    proposals: Mapping[int, Proposal] = field(default_factory=dict)
    """round -> the adapter version proposed for it (the latest proposal)."""
    disputes: Mapping[int, Dispute] = field(default_factory=dict)
    """submission id -> the dispute over it."""
    _tree: Tree | _Unbuilt = field(default=_UNBUILT, init=False, repr=False, compare=False)
    """The commitment over `entries()`; built on first use (a cache), or by `seal`."""
    _delta: dict[str, bytes] | None = field(default=None, init=False, repr=False, compare=False)
    """Entries `seal` changed relative to the parent state (what the store writes)."""

    def overlay(self) -> WorkingState:
        """A writable view whose writes do not touch this state; `seal` it into the next."""
        maps: dict[str, Any] = {name: ChainMap({}, getattr(self, name)) for name in MAPS}
        scalars = {name: getattr(self, name) for name in SCALARS}
        return WorkingState(params=self.params, **scalars, **maps)

    @property
    def delta(self) -> dict[str, bytes]:
        """The entries this state changed relative to its parent (see `WorkingState.seal`)."""
        if self._delta is None:
            raise StoreError("this state was not produced by a block; it has no delta")
        return self._delta

    @property
    def current_round(self) -> int:
        """Round of the next block (or of the last one, before any block: round 1)."""
        return _round_of(self.height, self.params)

    def entries(self) -> Iterator[tuple[str, bytes]]:
        """Every entry's (key, canonical bytes): the leaves of the commitment."""
        yield META_KEY, meta_bytes(self)
        for name in MAPS:
            for key, value in getattr(self, name).items():
                yield entry_key(name, key), entry_bytes(value)

    def commitment(self) -> Tree:
        if isinstance(self._tree, _Unbuilt):
            # a cache of a pure function of the fields, so setting it keeps the state frozen
            object.__setattr__(self, "_tree", commitment.build(self.entries()))
        assert not isinstance(self._tree, _Unbuilt)
        return self._tree

    def app_hash(self) -> str:
        """Hex root of the sparse Merkle tree over `entries()` (see r3mes.chain.commitment)."""
        return commitment.root_hash(self.commitment()).hex()


def _round_of(height: int, params: Params) -> int:
    return max(height - 1, 0) // params.round_length + 1


@dataclass
class WorkingState:
    """A block's (or one transaction's) writable view of a committed State.

    Scalars are copies; each map is a ChainMap whose first dict takes the writes, so a
    nested `overlay()` (one per transaction) is dropped on rejection or `absorb`ed on
    success, and `seal` re-encodes only what was written.
    """

    chain_id: str
    params: Params
    height: int
    last_block_hash: str
    last_block_time_ms: int
    supply: int
    minted: int
    burned: int
    next_account_number: int
    next_submission_id: int
    open_disputes: tuple[int, ...]
    accounts: ChainMap[str, Account]
    nodes: ChainMap[str, Node]
    rounds: ChainMap[int, Round]
    submissions: ChainMap[int, Submission]
    artifacts: ChainMap[str, ArtifactRecord]
    active: ChainMap[str, str]
    unbonding: ChainMap[str, Unbonding]
    proposals: ChainMap[int, Proposal]
    disputes: ChainMap[int, Dispute]

    @property
    def current_round(self) -> int:
        return _round_of(self.height, self.params)

    def overlay(self) -> WorkingState:
        """A child view for one transaction: its writes reach this one only by `absorb`."""
        maps: dict[str, Any] = {name: getattr(self, name).new_child() for name in MAPS}
        scalars = {name: getattr(self, name) for name in SCALARS}
        return WorkingState(params=self.params, **scalars, **maps)

    def absorb(self, child: WorkingState) -> None:
        """Commit a child view's writes into this one."""
        for name in MAPS:
            getattr(self, name).update(getattr(child, name).maps[0])
        for name in SCALARS:
            setattr(self, name, getattr(child, name))

    def seal(self, parent: State) -> State:
        """The committed State this view of `parent` describes.

        Only the written entries are re-encoded and re-hashed: maps without writes are
        shared with `parent`, changed ones are copied (a C-level dict copy) and updated,
        and the commitment is `parent`'s tree with the changed leaves replaced.
        """
        maps: dict[str, Any] = {}
        delta: dict[str, bytes] = {}
        for name in MAPS:
            writes = getattr(self, name).maps[0]
            base = getattr(parent, name)
            if not writes:
                maps[name] = base
                continue
            merged = base.copy() if isinstance(base, dict) else dict(base)
            merged.update(writes)
            maps[name] = merged
            for key, value in writes.items():
                delta[entry_key(name, key)] = entry_bytes(value)
        scalars = {name: getattr(self, name) for name in SCALARS}
        new = State(params=self.params, **scalars, **maps)
        delta[META_KEY] = meta_bytes(new)
        object.__setattr__(new, "_tree", commitment.update(parent.commitment(), delta))
        object.__setattr__(new, "_delta", delta)
        return new


def entry_key(map_name: str, key: object) -> str:
    return f"{map_name}/{key}"


def entry_bytes(value: Any) -> bytes:
    return _canonical(_plain(value))


def _plain(value: Any) -> Any:
    """`dataclasses.asdict` for these records (dataclasses, tuples, scalars), without its
    deep copies: this runs for every changed entry of every block."""
    names = getattr(value, "__dataclass_fields__", None)
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def meta_bytes(state: State | WorkingState) -> bytes:
    """The scalar part of the state (and the params) as one entry."""
    obj: dict[str, Any] = {"version": STATE_VERSION, "params": asdict(state.params)}
    for name in SCALARS:
        obj[name] = getattr(state, name)
    return _canonical(obj)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _canonical(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def _spec(doc: dict[str, Any]) -> ArtifactSpec:
    return ArtifactSpec(**{**doc, "target_modules": tuple(doc["target_modules"])})


_DECODERS: dict[str, tuple[Callable[[str], Any], Callable[[Any], Any]]] = {
    "accounts": (str, lambda d: Account(**d)),
    "nodes": (str, lambda d: Node(**d)),
    "rounds": (int, lambda d: Round(**{**d, "claims": tuple(tuple(c) for c in d["claims"])})),
    "submissions": (
        int,
        lambda d: Submission(
            **{
                **d,
                "attestations": tuple(Attestation(**a) for a in d["attestations"]),
                "assigned": tuple(d["assigned"]),
            }
        ),
    ),
    "artifacts": (str, lambda d: ArtifactRecord(**{**d, "spec": _spec(d["spec"])})),
    "active": (str, str),
    "proposals": (
        int,
        lambda d: Proposal(
            **{
                **d,
                "spec": _spec(d["spec"]),
                "submission_ids": tuple(d["submission_ids"]),
                "assigned": tuple(d["assigned"]),
                "attestations": tuple(Attestation(**a) for a in d["attestations"]),
            }
        ),
    ),
    "disputes": (
        int,
        lambda d: Dispute(
            **{
                **d,
                "referees": tuple(d["referees"]),
                "votes": tuple((a, b) for a, b in d["votes"]),
            }
        ),
    ),
    "unbonding": (
        str,
        lambda d: Unbonding(
            address=d["address"], entries=tuple(UnbondingEntry(**e) for e in d["entries"])
        ),
    ),
}


def state_from_entries(entries: Iterable[tuple[str, bytes]]) -> State:
    """Inverse of `State.entries()`; raises StoreError on anything malformed.

    The commitment is built from the stored bytes themselves, so any change to them shows
    up as an app hash that no longer matches the committed one.
    """
    rows = list(entries)
    maps: dict[str, Any] = {name: {} for name in MAPS}
    meta: dict[str, Any] | None = None
    try:
        for key, data in rows:
            if key == META_KEY:
                meta = json.loads(data)
                continue
            name, _, raw_key = key.partition("/")
            parse_key, build = _DECODERS[name]
            value = json.loads(data)
            maps[name][parse_key(raw_key)] = build(value)
        if meta is None:
            raise StoreError("stored state has no meta entry")
        if meta.get("version") != STATE_VERSION:
            raise StoreError(f"stored state version {meta.get('version')} is not {STATE_VERSION}")
        scalars = {name: meta[name] for name in SCALARS}
        scalars["open_disputes"] = tuple(scalars["open_disputes"])
        state = State(**scalars, params=Params(**meta["params"]), **maps)
    except StoreError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(f"stored state is malformed: {exc}") from exc
    object.__setattr__(state, "_tree", commitment.build(rows))
    return state


def genesis_state(genesis: Genesis) -> State:
    """The state at height 0: funded accounts, approved genesis artifacts, no rounds yet."""
    accounts: dict[str, Account] = {}
    for number, acc in enumerate(genesis.accounts, start=1):
        accounts[acc.address] = Account(address=acc.address, number=number, balance=acc.balance)
    artifacts: dict[str, ArtifactRecord] = {}
    active: dict[str, str] = {}
    for spec in genesis.artifacts:
        record = ArtifactRecord(spec=spec, status="approved", registered_by="", registered_height=0)
        artifacts[record.key] = record
        active[spec.kind] = record.key
    return State(
        chain_id=genesis.chain_id,
        params=genesis.params,
        last_block_hash=genesis.hash,
        last_block_time_ms=genesis.genesis_time_ms,
        supply=sum(acc.balance for acc in genesis.accounts),
        next_account_number=len(genesis.accounts) + 1,
        accounts=accounts,
        artifacts=artifacts,
        active=active,
    )
