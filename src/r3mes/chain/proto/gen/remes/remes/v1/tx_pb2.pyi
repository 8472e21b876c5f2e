from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_UNSPECIFIED: _ClassVar[NodeRole]
    NODE_ROLE_MINER: _ClassVar[NodeRole]
    NODE_ROLE_VALIDATOR: _ClassVar[NodeRole]
    NODE_ROLE_PROPOSER: _ClassVar[NodeRole]
    NODE_ROLE_SERVING: _ClassVar[NodeRole]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ACCEPT: _ClassVar[Verdict]
    VERDICT_REJECT: _ClassVar[Verdict]

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_MODEL: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_DATASET: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_ADAPTER: _ClassVar[ArtifactKind]
NODE_ROLE_UNSPECIFIED: NodeRole
NODE_ROLE_MINER: NodeRole
NODE_ROLE_VALIDATOR: NodeRole
NODE_ROLE_PROPOSER: NodeRole
NODE_ROLE_SERVING: NodeRole
VERDICT_UNSPECIFIED: Verdict
VERDICT_ACCEPT: Verdict
VERDICT_REJECT: Verdict
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
ARTIFACT_KIND_MODEL: ArtifactKind
ARTIFACT_KIND_DATASET: ArtifactKind
ARTIFACT_KIND_ADAPTER: ArtifactKind

class TxRaw(_message.Message):
    __slots__ = ("body_bytes", "auth_info_bytes", "signatures")
    BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUTH_INFO_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    body_bytes: bytes
    auth_info_bytes: bytes
    signatures: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, body_bytes: _Optional[bytes] = ..., auth_info_bytes: _Optional[bytes] = ..., signatures: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TxBody(_message.Message):
    __slots__ = ("messages", "memo", "timeout_height")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    memo: str
    timeout_height: int
    def __init__(self, messages: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ..., memo: _Optional[str] = ..., timeout_height: _Optional[int] = ...) -> None: ...

class SignerInfo(_message.Message):
    __slots__ = ("public_key", "sequence")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    sequence: int
    def __init__(self, public_key: _Optional[bytes] = ..., sequence: _Optional[int] = ...) -> None: ...

class AuthInfo(_message.Message):
    __slots__ = ("signer_infos",)
    SIGNER_INFOS_FIELD_NUMBER: _ClassVar[int]
    signer_infos: _containers.RepeatedCompositeFieldContainer[SignerInfo]
    def __init__(self, signer_infos: _Optional[_Iterable[_Union[SignerInfo, _Mapping]]] = ...) -> None: ...

class SignDoc(_message.Message):
    __slots__ = ("body_bytes", "auth_info_bytes", "chain_id", "account_number")
    BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUTH_INFO_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    body_bytes: bytes
    auth_info_bytes: bytes
    chain_id: str
    account_number: int
    def __init__(self, body_bytes: _Optional[bytes] = ..., auth_info_bytes: _Optional[bytes] = ..., chain_id: _Optional[str] = ..., account_number: _Optional[int] = ...) -> None: ...

class MsgRegisterNode(_message.Message):
    __slots__ = ("creator", "role", "endpoint", "stake")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STAKE_FIELD_NUMBER: _ClassVar[int]
    creator: str
    role: NodeRole
    endpoint: str
    stake: int
    def __init__(self, creator: _Optional[str] = ..., role: _Optional[_Union[NodeRole, str]] = ..., endpoint: _Optional[str] = ..., stake: _Optional[int] = ...) -> None: ...

class MsgSubmitGradient(_message.Message):
    __slots__ = ("creator", "round", "shard", "cid", "digest", "pow_nonce", "residual_cid", "residual_digest", "base_submission_id", "trace_cid", "trace_root")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    POW_NONCE_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_CID_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BASE_SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ROOT_FIELD_NUMBER: _ClassVar[int]
    creator: str
    round: int
    shard: int
    cid: str
    digest: str
    pow_nonce: int
    residual_cid: str
    residual_digest: str
    base_submission_id: int
    trace_cid: str
    trace_root: str
    def __init__(self, creator: _Optional[str] = ..., round: _Optional[int] = ..., shard: _Optional[int] = ..., cid: _Optional[str] = ..., digest: _Optional[str] = ..., pow_nonce: _Optional[int] = ..., residual_cid: _Optional[str] = ..., residual_digest: _Optional[str] = ..., base_submission_id: _Optional[int] = ..., trace_cid: _Optional[str] = ..., trace_root: _Optional[str] = ...) -> None: ...

class MsgAttest(_message.Message):
    __slots__ = ("creator", "submission_id", "verdict", "distance_ppm")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_PPM_FIELD_NUMBER: _ClassVar[int]
    creator: str
    submission_id: int
    verdict: Verdict
    distance_ppm: int
    def __init__(self, creator: _Optional[str] = ..., submission_id: _Optional[int] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., distance_ppm: _Optional[int] = ...) -> None: ...

class MsgProposeAdapter(_message.Message):
    __slots__ = ("creator", "round", "adapter_cid", "sha256", "size", "version", "parent_version", "submission_ids")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_CID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_IDS_FIELD_NUMBER: _ClassVar[int]
    creator: str
    round: int
    adapter_cid: str
    sha256: str
    size: int
    version: int
    parent_version: int
    submission_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, creator: _Optional[str] = ..., round: _Optional[int] = ..., adapter_cid: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., version: _Optional[int] = ..., parent_version: _Optional[int] = ..., submission_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("kind", "id", "version", "cid", "sha256", "size", "base_model_id", "base_model_version", "target_modules", "rank", "hf_repo", "hf_revision")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    HF_REPO_FIELD_NUMBER: _ClassVar[int]
    HF_REVISION_FIELD_NUMBER: _ClassVar[int]
    kind: ArtifactKind
    id: str
    version: int
    cid: str
    sha256: str
    size: int
    base_model_id: str
    base_model_version: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    rank: int
    hf_repo: str
    hf_revision: str
    def __init__(self, kind: _Optional[_Union[ArtifactKind, str]] = ..., id: _Optional[str] = ..., version: _Optional[int] = ..., cid: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., base_model_id: _Optional[str] = ..., base_model_version: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., rank: _Optional[int] = ..., hf_repo: _Optional[str] = ..., hf_revision: _Optional[str] = ...) -> None: ...

class MsgRegisterArtifact(_message.Message):
    __slots__ = ("creator", "artifact")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    creator: str
    artifact: Artifact
    def __init__(self, creator: _Optional[str] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class MsgApproveArtifact(_message.Message):
    __slots__ = ("creator", "kind", "id", "version")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    creator: str
    kind: ArtifactKind
    id: str
    version: int
    def __init__(self, creator: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class MsgServingHeartbeat(_message.Message):
    __slots__ = ("creator", "endpoint", "adapter_version", "capacity")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    creator: str
    endpoint: str
    adapter_version: int
    capacity: int
    def __init__(self, creator: _Optional[str] = ..., endpoint: _Optional[str] = ..., adapter_version: _Optional[int] = ..., capacity: _Optional[int] = ...) -> None: ...

class MsgTransferCredits(_message.Message):
    __slots__ = ("creator", "to", "amount")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    creator: str
    to: str
    amount: int
    def __init__(self, creator: _Optional[str] = ..., to: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class MsgFaucet(_message.Message):
    __slots__ = ("creator", "to", "amount")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    creator: str
    to: str
    amount: int
    def __init__(self, creator: _Optional[str] = ..., to: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class MsgUnbond(_message.Message):
    __slots__ = ("creator", "role", "amount")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    creator: str
    role: NodeRole
    amount: int
    def __init__(self, creator: _Optional[str] = ..., role: _Optional[_Union[NodeRole, str]] = ..., amount: _Optional[int] = ...) -> None: ...

class MsgWithdraw(_message.Message):
    __slots__ = ("creator",)
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    creator: str
    def __init__(self, creator: _Optional[str] = ...) -> None: ...

class MsgAttestAdapter(_message.Message):
    __slots__ = ("creator", "round", "version", "verdict")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    creator: str
    round: int
    version: int
    verdict: Verdict
    def __init__(self, creator: _Optional[str] = ..., round: _Optional[int] = ..., version: _Optional[int] = ..., verdict: _Optional[_Union[Verdict, str]] = ...) -> None: ...

class MsgOpenDispute(_message.Message):
    __slots__ = ("creator", "submission_id", "steps", "start_digest", "final_digest")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    START_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FINAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    creator: str
    submission_id: int
    steps: int
    start_digest: str
    final_digest: str
    def __init__(self, creator: _Optional[str] = ..., submission_id: _Optional[int] = ..., steps: _Optional[int] = ..., start_digest: _Optional[str] = ..., final_digest: _Optional[str] = ...) -> None: ...

class MsgDisputeCheckpoint(_message.Message):
    __slots__ = ("creator", "dispute_id", "step", "digest", "cid")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    DISPUTE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    creator: str
    dispute_id: int
    step: int
    digest: str
    cid: str
    def __init__(self, creator: _Optional[str] = ..., dispute_id: _Optional[int] = ..., step: _Optional[int] = ..., digest: _Optional[str] = ..., cid: _Optional[str] = ...) -> None: ...

class MsgDisputeVerdict(_message.Message):
    __slots__ = ("creator", "dispute_id", "digest")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    DISPUTE_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    creator: str
    dispute_id: int
    digest: str
    def __init__(self, creator: _Optional[str] = ..., dispute_id: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...
