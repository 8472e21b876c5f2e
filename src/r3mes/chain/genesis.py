"""Genesis: the chain id, consensus parameters, initial accounts and approved artifacts.

Parameters are integers (credits, blocks, milliseconds, ppm); the document is JSON with a
version tag and is validated on load, so a bad genesis fails before any block is made.
Types are strict (an integer field takes no float, bool or string, a bool field only
true/false) and addresses are stored in their canonical lower-case form, the form every
transaction must use.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError, GenesisError, TxInvalid
from r3mes.chain.msgs import ArtifactSpec, valid_artifact_id, validate_artifact

GENESIS_VERSION = 1
_CHAIN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_GENESIS_BYTES = 16 * 1024 * 1024
MAX_GENESIS_DEPTH = 6
"""document > artifacts > artifact > target_modules is four levels; deeper is not a genesis."""


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
    """k: matching verdicts of assigned validators that settle a submission (verified or
    rejected), and that approve or reject a proposed adapter version."""
    validators_per_submission: int = 3
    """n: validators the ledger assigns to each submission (stake-weighted, from the round
    seed); fewer when fewer are registered. k <= n."""
    attestation_rounds: int = 2
    """Rounds after a submission's own during which its assigned validators may attest; when
    they end, assigned validators that disagreed with the settled verdict or never attested
    lose `validator_penalty_reputation`."""
    validator_penalty_reputation: int = 10
    """Reputation an assigned validator loses for a verdict against the settled one or none."""
    dispute_step_blocks: int = 20
    """Blocks a dispute party (or its referees' checkpoint poster) has for each move."""
    unbonding_blocks: int = 100
    """Blocks between `Unbond` and the earliest `Withdraw`; the stake stays slashable."""
    spot_check_ppm: int = 100_000
    """Share of a task's steps (ppm, in (0, 1_000_000]) a validator re-executes by default."""
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
            if f.type in ("int", int):
                _require_uint(value, f"param {f.name}")
            elif f.type in ("bool", bool) and not isinstance(value, bool):
                raise GenesisError(f"param {f.name} must be true or false, not {value!r}")
            elif f.type in ("str", str) and not isinstance(value, str):
                raise GenesisError(f"param {f.name} must be a string, not {value!r}")
        if self.round_length < 1 or self.shards_per_round < 1 or self.attestation_quorum < 1:
            raise GenesisError("round_length, shards_per_round and attestation_quorum must be >= 1")
        low = 0 if self.devnet else 16
        if not low <= self.pow_difficulty <= 32:
            raise GenesisError(
                f"pow_difficulty must be in [{low}, 32]"
                + ("" if self.devnet else "; set devnet=true in genesis for lower values")
            )
        if not 1 <= self.attestation_quorum <= self.validators_per_submission:
            raise GenesisError(
                "attestation_quorum (k) must be in [1, validators_per_submission (n)]"
            )
        if not 0 < self.spot_check_ppm <= 1_000_000:
            raise GenesisError("spot_check_ppm must be in (0, 1000000]")
        if self.max_block_txs < 1:
            raise GenesisError("max_block_txs must be >= 1")
        if self.authority:
            object.__setattr__(self, "authority", _address(self.authority, "param authority"))
        if not valid_artifact_id(self.adapter_id):
            raise GenesisError("param adapter_id must be 1-128 characters of [A-Za-z0-9._/:-]")

    @classmethod
    def from_dict(cls, doc: object) -> Params:
        """Params from their JSON object; unknown names are errors (typos must not pass)."""
        return cls(**_known_fields(cls, doc, "params"))


def _require_uint(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GenesisError(f"{what} must be a non-negative integer, not {value!r}")


def _address(value: object, what: str) -> str:
    """`value` as a canonical (lower-case) address, or GenesisError saying why not."""
    if not isinstance(value, str):
        raise GenesisError(f"{what} must be an address string, not {value!r}")
    try:
        return validate_address(value)
    except AddressError as exc:
        raise GenesisError(f"{what}: {exc}") from exc


def _known_fields(cls: type[Any], doc: object, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise GenesisError(f"genesis {what} must be a JSON object")
    unknown = sorted(set(doc) - {f.name for f in fields(cls)})
    if unknown:
        raise GenesisError(f"unknown genesis {what} fields: {unknown}")
    missing = [
        f.name
        for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in doc
    ]
    if missing:
        raise GenesisError(f"genesis {what} lacks fields: {missing}")
    return doc


@dataclass(frozen=True)
class GenesisAccount:
    address: str
    """Normalised to lower case (bech32 is case-insensitive; mixed case is invalid)."""
    balance: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _address(self.address, "genesis account"))
        _require_uint(self.balance, f"genesis account {self.address} balance")


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    params: Params = field(default_factory=Params)
    accounts: tuple[GenesisAccount, ...] = ()
    artifacts: tuple[ArtifactSpec, ...] = ()
    """Artifacts approved from the start (the shipped base model and dataset)."""

    def __post_init__(self) -> None:
        if not isinstance(self.chain_id, str) or not _CHAIN_ID_RE.match(self.chain_id):
            raise GenesisError("chain_id must be 1-64 characters of [A-Za-z0-9_.-]")
        _require_uint(self.genesis_time_ms, "genesis_time_ms")
        if not isinstance(self.params, Params):
            raise GenesisError("genesis params must be a Params")
        seen: set[str] = set()
        for acc in self.accounts:
            if not isinstance(acc, GenesisAccount):
                raise GenesisError("genesis accounts must be GenesisAccount records")
            if acc.address in seen:
                raise GenesisError(f"genesis account {acc.address} is listed twice")
            seen.add(acc.address)
        keys = set()
        for art in self.artifacts:
            try:
                validate_artifact(art)
            except TxInvalid as exc:
                raise GenesisError(f"genesis artifact {art.id}: {exc.log}") from exc
            except TypeError as exc:  # a field of the wrong type reaching a regex
                raise GenesisError(f"genesis artifact {art.id}: wrong field type") from exc
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
        if not isinstance(text, str):
            raise GenesisError("a genesis document is JSON text")
        if len(text) > MAX_GENESIS_BYTES:
            raise GenesisError("genesis document is too large")
        try:
            doc = json.loads(text)
        except RecursionError:
            raise GenesisError(
                f"genesis document nests too deeply (at most {MAX_GENESIS_DEPTH} levels)"
            ) from None
        except ValueError as exc:
            raise GenesisError(f"genesis document is not JSON: {exc}") from exc
        _check_depth(doc)
        if not isinstance(doc, dict):
            raise GenesisError("genesis document must be a JSON object")
        if doc.get("version") != GENESIS_VERSION:
            raise GenesisError(f"genesis version must be {GENESIS_VERSION}")
        body = _known_fields(cls, {k: v for k, v in doc.items() if k != "version"}, "document")
        accounts, artifacts = body.get("accounts", []), body.get("artifacts", [])
        if not isinstance(accounts, list) or not isinstance(artifacts, list):
            raise GenesisError("genesis accounts and artifacts must be JSON lists")
        return cls(
            chain_id=body["chain_id"],
            genesis_time_ms=body["genesis_time_ms"],
            params=Params.from_dict(body.get("params", {})),
            accounts=tuple(
                GenesisAccount(**_known_fields(GenesisAccount, a, "account")) for a in accounts
            ),
            artifacts=tuple(artifact_from_dict(a) for a in artifacts),
        )

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            return cls.from_json(path.read_text())
        except OSError as exc:
            raise GenesisError(
                f"cannot read genesis {path}: {exc}; run `r3mes devnet init`"
            ) from exc


def _check_depth(doc: object) -> None:
    """Refuse nesting beyond MAX_GENESIS_DEPTH before any check formats a value (repr recurses)."""
    level, depth = [doc], 0
    while level:  # breadth-first, one list per depth
        depth += 1
        if depth > MAX_GENESIS_DEPTH:
            raise GenesisError(
                f"genesis document nests more than {MAX_GENESIS_DEPTH} levels deep; "
                "a genesis is an object of params, accounts and artifacts"
            )
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]


def artifact_from_dict(doc: object) -> ArtifactSpec:
    """An ArtifactSpec from its JSON form (lists become tuples; unknown keys are errors)."""
    data = dict(_known_fields(ArtifactSpec, doc, "artifact"))
    modules = data.get("target_modules", ())
    if not isinstance(modules, list | tuple):
        raise GenesisError("artifact target_modules must be a list of module names")
    data["target_modules"] = tuple(modules)
    return ArtifactSpec(**data)
