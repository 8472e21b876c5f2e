"""Ledger messages as frozen dataclasses, their protobuf `Any` encoding, and stateless checks.

The state machine only ever sees these dataclasses; protobuf lives at the byte boundary.
`validate_basic` is the Cosmos-style stateless check run by both check_tx and deliver_tx.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from google.protobuf.message import Message

from r3mes.chain.codes import Code
from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import AddressError, TxInvalid
from r3mes.chain.proto.gen.remes.remes.v1 import tx_pb2
from r3mes.chain.vocab import KINDS, ROLES, VERDICTS, ArtifactKind, Role, Verdict

MAX_U64 = 2**64 - 1
MAX_U32 = 2**32 - 1
MAX_IDS = 1024
MAX_DISPUTE_STEPS = 1 << 20
"""Most training steps a dispute bisects over (20 halvings)."""

_CID_RE = re.compile(r"^[A-Za-z0-9]{1,128}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[A-Za-z0-9._/:-]{1,128}$")
_MODULE_RE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
_TEXT_RE = re.compile(r"^[\x21-\x7e]{0,256}$")


@dataclass(frozen=True)
class RegisterNode:
    creator: str
    role: Role
    endpoint: str = ""
    stake: int = 0


@dataclass(frozen=True)
class SubmitGradient:
    creator: str
    round: int
    shard: int
    cid: str
    digest: str
    pow_nonce: int = 0
    residual_cid: str = ""
    """CID of the miner's error-feedback residual after this round ("" = none committed)."""
    residual_digest: str = ""
    """Hex SHA-256 of the residual's canonical bytes (set together with `residual_cid`)."""
    base_submission_id: int = 0
    """The miner's earlier verified submission whose committed residual this update started
    from; 0 = a zero residual."""
    trace_cid: str = ""
    """CID of the miner's step trace (`r3mes.work.trace`; "" = none committed)."""
    trace_root: str = ""
    """Merkle root over the trace's per-step state digests (set together with `trace_cid`)."""


@dataclass(frozen=True)
class Attest:
    creator: str
    submission_id: int
    verdict: Verdict
    distance_ppm: int = 0


@dataclass(frozen=True)
class ProposeAdapter:
    creator: str
    round: int
    adapter_cid: str
    sha256: str
    size: int
    version: int
    parent_version: int
    submission_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ArtifactSpec:
    """An artifact record as registered (the registry's JSON has the same field names)."""

    kind: ArtifactKind
    id: str
    version: int
    cid: str
    sha256: str
    size: int
    base_model_id: str = ""
    base_model_version: int = 0
    target_modules: tuple[str, ...] = ()
    rank: int = 0
    hf_repo: str = ""
    hf_revision: str = ""


@dataclass(frozen=True)
class RegisterArtifact:
    creator: str
    artifact: ArtifactSpec


@dataclass(frozen=True)
class ApproveArtifact:
    creator: str
    kind: ArtifactKind
    id: str
    version: int


@dataclass(frozen=True)
class ServingHeartbeat:
    creator: str
    endpoint: str
    adapter_version: int = 0
    capacity: int = 0


@dataclass(frozen=True)
class Unbond:
    creator: str
    role: Role
    amount: int


@dataclass(frozen=True)
class Withdraw:
    creator: str


@dataclass(frozen=True)
class AttestAdapter:
    creator: str
    round: int
    version: int
    verdict: Verdict


@dataclass(frozen=True)
class OpenDispute:
    creator: str
    submission_id: int
    steps: int
    start_digest: str
    final_digest: str


@dataclass(frozen=True)
class DisputeCheckpoint:
    creator: str
    dispute_id: int
    step: int
    digest: str
    cid: str = ""


@dataclass(frozen=True)
class DisputeVerdict:
    creator: str
    dispute_id: int
    digest: str


@dataclass(frozen=True)
class TransferCredits:
    creator: str
    to: str
    amount: int


@dataclass(frozen=True)
class Faucet:
    creator: str
    to: str
    amount: int


Msg = (
    RegisterNode
    | SubmitGradient
    | Attest
    | ProposeAdapter
    | RegisterArtifact
    | ApproveArtifact
    | ServingHeartbeat
    | TransferCredits
    | Faucet
    | Unbond
    | Withdraw
    | AttestAdapter
    | OpenDispute
    | DisputeCheckpoint
    | DisputeVerdict
)

_PROTO: dict[type[Any], type[Message]] = {
    RegisterNode: tx_pb2.MsgRegisterNode,
    SubmitGradient: tx_pb2.MsgSubmitGradient,
    Attest: tx_pb2.MsgAttest,
    ProposeAdapter: tx_pb2.MsgProposeAdapter,
    RegisterArtifact: tx_pb2.MsgRegisterArtifact,
    ApproveArtifact: tx_pb2.MsgApproveArtifact,
    ServingHeartbeat: tx_pb2.MsgServingHeartbeat,
    TransferCredits: tx_pb2.MsgTransferCredits,
    Faucet: tx_pb2.MsgFaucet,
    Unbond: tx_pb2.MsgUnbond,
    Withdraw: tx_pb2.MsgWithdraw,
    AttestAdapter: tx_pb2.MsgAttestAdapter,
    OpenDispute: tx_pb2.MsgOpenDispute,
    DisputeCheckpoint: tx_pb2.MsgDisputeCheckpoint,
    DisputeVerdict: tx_pb2.MsgDisputeVerdict,
}
_BY_URL: dict[str, type[Any]] = {
    f"/{proto.DESCRIPTOR.full_name}": cls for cls, proto in _PROTO.items()
}
# Enum fields are lower-case words in Python and prefixed upper-case names in protobuf.
_ENUM_PREFIX = {"role": "NODE_ROLE_", "verdict": "VERDICT_", "kind": "ARTIFACT_KIND_"}


def type_url(msg: Msg) -> str:
    return f"/{_PROTO[type(msg)].DESCRIPTOR.full_name}"


def _fields_to_proto(obj: Any, proto: Message) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in _ENUM_PREFIX:
            setattr(
                proto,
                f.name,
                proto.DESCRIPTOR.fields_by_name[f.name]
                .enum_type.values_by_name[_ENUM_PREFIX[f.name] + value.upper()]
                .number,
            )
        elif isinstance(value, ArtifactSpec):
            _fields_to_proto(value, getattr(proto, f.name))
        elif isinstance(value, tuple):
            getattr(proto, f.name).extend(value)
        else:
            setattr(proto, f.name, value)


def _fields_from_proto(cls: type[Any], proto: Message) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        value = getattr(proto, f.name)
        if f.name in _ENUM_PREFIX:
            name = proto.DESCRIPTOR.fields_by_name[f.name].enum_type.values_by_number[value].name
            kwargs[f.name] = name.removeprefix(_ENUM_PREFIX[f.name]).lower()
        elif f.name == "artifact":
            kwargs[f.name] = _fields_from_proto(ArtifactSpec, value)
        elif f.name in ("submission_ids", "target_modules"):
            kwargs[f.name] = tuple(value)
        else:
            kwargs[f.name] = value
    return cls(**kwargs)


def encode_msg(msg: Msg) -> tuple[str, bytes]:
    """(type_url, protobuf bytes) of `msg`; raises TxInvalid if a field is out of range."""
    proto = _PROTO[type(msg)]()
    try:
        _fields_to_proto(msg, proto)
    except (ValueError, TypeError, KeyError) as exc:
        raise TxInvalid(Code.INVALID, f"cannot encode {type(msg).__name__}: {exc}") from exc
    return type_url(msg), proto.SerializeToString(deterministic=True)


def decode_msg(url: str, value: bytes) -> Msg:
    """Parse an `Any`; raises KeyError for unknown type urls and protobuf errors otherwise."""
    cls = _BY_URL[url]
    proto = _PROTO[cls]()
    proto.ParseFromString(value)
    msg: Msg = _fields_from_proto(cls, proto)
    return msg


def _fail(log: str) -> TxInvalid:
    return TxInvalid(Code.INVALID, log)


def _check(cond: bool, log: str) -> None:
    if not cond:
        raise _fail(log)


def _check_address(value: str, what: str) -> None:
    try:
        validate_address(value)
    except AddressError as exc:
        raise _fail(f"{what}: {exc}") from exc
    _check(value == value.lower(), f"{what} must be lower case")


def _check_uint(value: int, what: str, *, low: int = 0, high: int = MAX_U64) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        f"{what} must be an integer in [{low}, {high}]",
    )


def valid_artifact_id(value: object) -> bool:
    """True iff `value` is an artifact id: 1-128 characters of [A-Za-z0-9._/:-]."""
    return isinstance(value, str) and bool(_ID_RE.match(value))


def validate_artifact(a: ArtifactSpec) -> None:
    _check(a.kind in KINDS, f"artifact kind must be one of {KINDS}")
    _check(bool(_ID_RE.match(a.id)), "artifact id must be 1-128 chars of [A-Za-z0-9._/:-]")
    _check_uint(a.version, "artifact version", low=1)
    _check(bool(_CID_RE.match(a.cid)), "artifact cid must be 1-128 alphanumeric characters")
    _check(bool(_HEX64_RE.match(a.sha256)), "artifact sha256 must be 64 lower-case hex digits")
    _check_uint(a.size, "artifact size", low=1)
    _check(a.base_model_id == "" or bool(_ID_RE.match(a.base_model_id)), "bad base_model_id")
    _check_uint(a.base_model_version, "base_model_version")
    _check(len(a.target_modules) <= 32, "at most 32 target modules")
    _check(all(_MODULE_RE.match(m) for m in a.target_modules), "bad target module name")
    _check_uint(a.rank, "rank", high=4096)
    _check(bool(_TEXT_RE.match(a.hf_repo)) and bool(_TEXT_RE.match(a.hf_revision)), "bad hf ref")
    if a.kind == "adapter":
        _check(bool(a.base_model_id), "an adapter artifact must name its base_model_id")


def validate_basic(msg: Msg) -> None:
    """Stateless checks of one message; raises TxInvalid(code=INVALID) with the reason."""
    _check_address(msg.creator, "creator")
    if isinstance(msg, RegisterNode):
        _check(msg.role in ROLES, f"role must be one of {ROLES}")
        _check(bool(_TEXT_RE.match(msg.endpoint)), "endpoint must be <= 256 printable chars")
        _check_uint(msg.stake, "stake")
    elif isinstance(msg, SubmitGradient):
        _check_uint(msg.round, "round", low=1)
        _check_uint(msg.shard, "shard", high=MAX_U32)
        _check(bool(_CID_RE.match(msg.cid)), "cid must be 1-128 alphanumeric characters")
        _check(bool(_HEX64_RE.match(msg.digest)), "digest must be 64 lower-case hex digits")
        _check_uint(msg.pow_nonce, "pow_nonce")
        _check(
            (msg.residual_cid == "") == (msg.residual_digest == ""),
            "residual_cid and residual_digest are set together",
        )
        _check(
            msg.residual_cid == "" or bool(_CID_RE.match(msg.residual_cid)),
            "residual_cid must be 1-128 alphanumeric characters",
        )
        _check(
            msg.residual_digest == "" or bool(_HEX64_RE.match(msg.residual_digest)),
            "residual_digest must be 64 lower-case hex digits",
        )
        _check_uint(msg.base_submission_id, "base_submission_id")
        _check(
            (msg.trace_cid == "") == (msg.trace_root == ""),
            "trace_cid and trace_root are set together",
        )
        _check(
            msg.trace_cid == "" or bool(_CID_RE.match(msg.trace_cid)),
            "trace_cid must be 1-128 alphanumeric characters",
        )
        _check(
            msg.trace_root == "" or bool(_HEX64_RE.match(msg.trace_root)),
            "trace_root must be 64 lower-case hex digits",
        )
    elif isinstance(msg, Attest):
        _check_uint(msg.submission_id, "submission_id", low=1)
        _check(msg.verdict in VERDICTS, f"verdict must be one of {VERDICTS}")
        _check_uint(msg.distance_ppm, "distance_ppm", high=10**12)
    elif isinstance(msg, ProposeAdapter):
        _check_uint(msg.round, "round", low=1)
        _check(bool(_CID_RE.match(msg.adapter_cid)), "adapter_cid must be alphanumeric")
        _check(bool(_HEX64_RE.match(msg.sha256)), "sha256 must be 64 lower-case hex digits")
        _check_uint(msg.size, "size", low=1)
        _check_uint(msg.version, "version", low=1)
        _check_uint(msg.parent_version, "parent_version")
        _check(msg.version == msg.parent_version + 1, "version must be parent_version + 1")
        _check(0 < len(msg.submission_ids) <= MAX_IDS, f"1..{MAX_IDS} submission ids")
        _check(len(set(msg.submission_ids)) == len(msg.submission_ids), "duplicate submission id")
    elif isinstance(msg, RegisterArtifact):
        validate_artifact(msg.artifact)
    elif isinstance(msg, ApproveArtifact):
        _check(msg.kind in KINDS, f"kind must be one of {KINDS}")
        _check(bool(_ID_RE.match(msg.id)), "bad artifact id")
        _check_uint(msg.version, "version", low=1)
    elif isinstance(msg, ServingHeartbeat):
        _check(bool(_TEXT_RE.match(msg.endpoint)), "endpoint must be <= 256 printable chars")
        _check_uint(msg.adapter_version, "adapter_version")
        _check_uint(msg.capacity, "capacity", high=MAX_U32)
    elif isinstance(msg, Unbond):
        _check(msg.role in ROLES, f"role must be one of {ROLES}")
        _check_uint(msg.amount, "amount", low=1)
    elif isinstance(msg, AttestAdapter):
        _check_uint(msg.round, "round", low=1)
        _check_uint(msg.version, "version", low=1)
        _check(msg.verdict in VERDICTS, f"verdict must be one of {VERDICTS}")
    elif isinstance(msg, OpenDispute):
        _check_uint(msg.submission_id, "submission_id", low=1)
        _check_uint(msg.steps, "steps", low=1, high=MAX_DISPUTE_STEPS)
        _check(bool(_HEX64_RE.match(msg.start_digest)), "start_digest must be 64 hex digits")
        _check(bool(_HEX64_RE.match(msg.final_digest)), "final_digest must be 64 hex digits")
    elif isinstance(msg, DisputeCheckpoint):
        _check_uint(msg.dispute_id, "dispute_id", low=1)
        _check_uint(msg.step, "step", high=MAX_DISPUTE_STEPS)
        _check(bool(_HEX64_RE.match(msg.digest)), "digest must be 64 lower-case hex digits")
        _check(msg.cid == "" or bool(_CID_RE.match(msg.cid)), "cid must be alphanumeric")
    elif isinstance(msg, DisputeVerdict):
        _check_uint(msg.dispute_id, "dispute_id", low=1)
        _check(bool(_HEX64_RE.match(msg.digest)), "digest must be 64 lower-case hex digits")
    elif isinstance(msg, TransferCredits | Faucet):
        _check_address(msg.to, "to")
        _check_uint(msg.amount, "amount", low=1)
