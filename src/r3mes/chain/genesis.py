"""Genesis: the chain id, consensus parameters, initial accounts and approved artifacts.

Parameters are integers (credits, blocks, milliseconds, ppm); the document is JSON with a
version tag and is validated on load, so a bad genesis fails before any block is made.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError, GenesisError, TxInvalid
from r3mes.chain.msgs import ArtifactSpec, validate_artifact

GENESIS_VERSION = 1
_CHAIN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_GENESIS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Params:
    """Consensus parameters; every field is an integer or bool so the state stays exact."""

    round_length: int = 10
    """Blocks per training round; round r spans heights (r-1)*L+1 .. r*L."""
    shards_per_round: int = 16
    """Dataset shards a round offers; each shard is claimed by at most one miner."""
    pow_difficulty: int = 20
    """Leading zero bits SubmitGradient's proof of work needs (16-32; 0-32 on devnets)."""
    devnet: bool = False
    """Devnet mode: enables the Faucet message and PoW difficulties below 16."""
    attestation_quorum: int = 2
    """Matching validator verdicts that settle a submission (verified or rejected)."""
    min_stake: int = 0
    """Credits a node must lock when it first registers in a role."""
    miner_reward: int = 100
    """Credits minted to a miner whose submission is verified."""
    validator_reward: int = 10
    """Credits minted to each validator on the winning side of a settled submission."""
    proposer_reward: int = 50
    """Credits minted to the proposer of an approved adapter version."""
    slash_amount: int = 50
    """Stake burned from a miner whose submission a quorum rejected."""
    reputation_gain_miner: int = 10
    reputation_gain_validator: int = 2
    reputation_gain_proposer: int = 5
    reputation_penalty: int = 50
    """Reputation lost by a miner whose submission a quorum rejected (floored at 0)."""
    serving_stale_after_ms: int = 120_000
    """A serving node without a heartbeat for this long (block time) drops out."""
    faucet_max_amount: int = 1_000_000
    """Largest single Faucet mint (devnet only)."""
    max_block_txs: int = 2000
    authority: str = ""
    """Address allowed to approve artifacts (empty: nobody; genesis artifacts still count)."""
    adapter_id: str = "r3mes-adapter"
    """Artifact id under which proposed adapter versions are recorded."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise GenesisError(f"param {f.name} must be a non-negative integer")
        if self.round_length < 1 or self.shards_per_round < 1 or self.attestation_quorum < 1:
            raise GenesisError("round_length, shards_per_round and attestation_quorum must be >= 1")
        low = 0 if self.devnet else 16
        if not low <= self.pow_difficulty <= 32:
            raise GenesisError(
                f"pow_difficulty must be in [{low}, 32]"
                + ("" if self.devnet else "; set devnet=true in genesis for lower values")
            )
        if self.max_block_txs < 1:
            raise GenesisError("max_block_txs must be >= 1")
        if self.authority:
            try:
                validate_address(self.authority)
            except AddressError as exc:
                raise GenesisError(f"authority: {exc}") from exc


@dataclass(frozen=True)
class GenesisAccount:
    address: str
    balance: int


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    params: Params = field(default_factory=Params)
    accounts: tuple[GenesisAccount, ...] = ()
    artifacts: tuple[ArtifactSpec, ...] = ()
    """Artifacts approved from the start (the shipped base model and dataset)."""

    def __post_init__(self) -> None:
        if not _CHAIN_ID_RE.match(self.chain_id):
            raise GenesisError("chain_id must be 1-64 characters of [A-Za-z0-9_.-]")
        if self.genesis_time_ms < 0:
            raise GenesisError("genesis_time_ms must be >= 0")
        seen: set[str] = set()
        for acc in self.accounts:
            try:
                validate_address(acc.address)
            except AddressError as exc:
                raise GenesisError(f"genesis account: {exc}") from exc
            if acc.address in seen or acc.balance < 0:
                raise GenesisError(f"genesis account {acc.address} duplicated or negative")
            seen.add(acc.address)
        keys = set()
        for art in self.artifacts:
            try:
                validate_artifact(art)
            except TxInvalid as exc:
                raise GenesisError(f"genesis artifact {art.id}: {exc.log}") from exc
            keys.add((art.kind, art.id, art.version))
        if len(keys) != len(self.artifacts):
            raise GenesisError("genesis artifacts must be unique by (kind, id, version)")

    def to_json(self) -> str:
        doc = {"version": GENESIS_VERSION, **asdict(self)}
        return json.dumps(doc, sort_keys=True, indent=2)

    @property
    def hash(self) -> str:
        """Hex SHA-256 of the canonical genesis JSON; the 'block hash' before height 1."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def with_params(self, **changes: Any) -> Genesis:
        return replace(self, params=replace(self.params, **changes))

    @classmethod
    def from_json(cls, text: str) -> Genesis:
        if len(text) > MAX_GENESIS_BYTES:
            raise GenesisError("genesis document is too large")
        try:
            doc = json.loads(text)
            if doc.pop("version", None) != GENESIS_VERSION:
                raise GenesisError(f"genesis version must be {GENESIS_VERSION}")
            return cls(
                chain_id=doc["chain_id"],
                genesis_time_ms=int(doc["genesis_time_ms"]),
                params=Params(**doc.get("params", {})),
                accounts=tuple(GenesisAccount(**a) for a in doc.get("accounts", [])),
                artifacts=tuple(artifact_from_dict(a) for a in doc.get("artifacts", [])),
            )
        except GenesisError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GenesisError(f"genesis document is malformed: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            return cls.from_json(path.read_text())
        except OSError as exc:
            raise GenesisError(
                f"cannot read genesis {path}: {exc}; run `r3mes devnet init`"
            ) from exc


def artifact_from_dict(doc: dict[str, Any]) -> ArtifactSpec:
    """An ArtifactSpec from its JSON form (lists become tuples; unknown keys are errors)."""
    allowed = {f.name for f in fields(ArtifactSpec)}
    unknown = set(doc) - allowed
    if unknown:
        raise GenesisError(f"unknown artifact fields: {sorted(unknown)}")
    data = dict(doc)
    data["target_modules"] = tuple(data.get("target_modules", ()))
    return ArtifactSpec(**data)
