"""Approved artifact records: the one record type outside the ledger's state.

`ArtifactRecord` is the record every node works with (miners, validators and proposers
through `r3mes.node.artifacts`, serving nodes through `UnifiedRegistry`), and it always names
an installable artifact (safe folder names, a real CID, a SHA-256). The ledger keeps its own
consensus entry (`r3mes.chain.state.ArtifactRecord`, never leaves the chain) and lists
approved ones on the wire as `r3mes.chain.client_types.ArtifactInfo`: the same fields, but
only ledger-legal (ids may hold '/' or ':', any alphanumeric CID) and "" / 0 for "absent".
`ArtifactRecord.from_ledger` and `ArtifactRecord.to_ledger` are the two explicit conversions
at that one boundary. Versions are integers on both sides (`<id>/<version>/` folder names
are their decimal form); `from_dict` reads the registry's own cache files and converts the
decimal-string versions older caches hold, explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from r3mes.registry.errors import InvalidArtifactRecord
from r3mes.storage.multiformats import is_cid

if TYPE_CHECKING:
    from r3mes.chain.client_types import ArtifactInfo

KINDS = ("model", "dataset", "adapter")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_SIZE = 1 << 40


class ArtifactSource(Protocol):
    """Where approved artifacts come from; `r3mes.chain.client.BlockchainClient` satisfies it.

    Entries are the ledger client's `ArtifactInfo`s, or dicts in the ledger's JSON shape (a
    test's own source); the registry converts each with `ArtifactRecord.from_ledger`, so one
    entry it cannot install is rejected on its own.
    """

    def approved_artifacts(self, kind: str | None = None) -> Sequence[object]:
        """Approved artifact entries, optionally of one kind."""
        ...


_MAX_VERSION = (1 << 63) - 1


def _check_version(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_VERSION:
        raise InvalidArtifactRecord(field, "must be a non-negative integer")
    return value


def _legacy_version(field: str, value: object) -> Any:
    """Older registry caches stored versions as decimal strings ("3"); read them as 3."""
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            raise InvalidArtifactRecord(
                field, f"legacy version {value[:40]!r} is not a number; run `r3mes registry sync`"
            )
        return int(value)
    return value


def _check_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidArtifactRecord(field, "must be 1-128 chars of letters, digits, . _ -")
    if value in (".", "..") or ".." in value:
        raise InvalidArtifactRecord(field, "must not contain '..'")
    return value


def _as_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArtifactRecord(field, "must be an integer")
    try:
        return int(value)
    except ValueError:
        raise InvalidArtifactRecord(field, "must be an integer") from None


@dataclass(frozen=True)
class ArtifactRecord:
    """One approved model, dataset or adapter."""

    id: str
    """Stable name, e.g. "bitnet-b1.58-tiny" (also a folder name)."""
    kind: str
    """"model", "dataset" or "adapter"."""
    version: int
    """Version number as the ledger counts it (adapters: 1, 2, ...)."""
    cid: str
    """CID of the artifact's single file (a bundle for directories)."""
    sha256: str
    """Lower-case hex SHA-256 of the file's bytes."""
    size: int
    """File size in bytes."""
    base_model_id: str | None = None
    """Adapters: the model they were trained on."""
    base_model_version: int | None = None
    """Adapters: the version of that model."""
    target_modules: tuple[str, ...] = ()
    """Adapters: module names the LoRA wraps (used for conflict checks)."""
    rank: int | None = None
    """Adapters: LoRA rank."""
    hf_repo: str | None = None
    """Optional Hugging Face repo holding the same file."""
    hf_revision: str | None = None
    """Revision (commit) of that repo."""
    approved_height: int = 0
    """Ledger height at which the artifact was approved."""

    def __post_init__(self) -> None:
        _check_name("id", self.id)
        _check_version("version", self.version)
        if self.kind not in KINDS:
            raise InvalidArtifactRecord("kind", f"must be one of {', '.join(KINDS)}")
        if not isinstance(self.cid, str) or not is_cid(self.cid):
            raise InvalidArtifactRecord("cid", f"{str(self.cid)[:80]!r} is not a valid CID")
        if not isinstance(self.sha256, str) or not _SHA_RE.match(self.sha256):
            raise InvalidArtifactRecord("sha256", "must be 64 lower-case hex characters")
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise InvalidArtifactRecord("size", "must be an integer")
        if not 0 <= self.size <= _MAX_SIZE:
            raise InvalidArtifactRecord("size", "must be between 0 and 1 TiB")
        if self.kind == "adapter":
            self._check_adapter()
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank <= 0):
            raise InvalidArtifactRecord("rank", "must be a positive integer")
        if not isinstance(self.approved_height, int) or self.approved_height < 0:
            raise InvalidArtifactRecord("approved_height", "must be a non-negative integer")

    def _check_adapter(self) -> None:
        if self.base_model_id is None or self.base_model_version is None:
            raise InvalidArtifactRecord("base_model_id", "is required for adapters")
        _check_name("base_model_id", self.base_model_id)
        _check_version("base_model_version", self.base_model_version)
        for module in self.target_modules:
            if not isinstance(module, str) or not module:
                raise InvalidArtifactRecord("target_modules", "must be non-empty strings")

    @property
    def ref(self) -> str:
        """Human reference "kind id@version"."""
        return f"{self.kind} {self.id}@{self.version}"

    @classmethod
    def from_ledger(cls, entry: object) -> ArtifactRecord:
        """The record of an approved artifact as the ledger lists it: an `ArtifactInfo` or its
        JSON object (integer versions, "" / 0 for absent); validated as installable."""
        from r3mes.chain.client_types import ArtifactInfo

        doc = asdict(entry) if isinstance(entry, ArtifactInfo) else entry
        if not isinstance(doc, Mapping):
            raise InvalidArtifactRecord("record", "must be a JSON object or an ArtifactInfo")
        for key in ("version", "base_model_version"):
            if key in doc and isinstance(doc[key], str):
                raise InvalidArtifactRecord(key, "the ledger numbers versions with integers")
        raw = dict(doc)
        if not raw.get("base_model_id"):
            raw["base_model_id"] = raw["base_model_version"] = None
        return cls.from_dict(raw)

    def to_ledger(self) -> ArtifactInfo:
        """The ledger's listing of this (approved) record: the inverse of `from_ledger`."""
        from r3mes.chain.client_types import ArtifactInfo

        return ArtifactInfo(
            id=self.id,
            kind=self.kind,
            version=self.version,
            cid=self.cid,
            sha256=self.sha256,
            size=self.size,
            base_model_id=self.base_model_id or "",
            base_model_version=self.base_model_version or 0,
            target_modules=list(self.target_modules),
            rank=self.rank or 0,
            hf_repo=self.hf_repo or "",
            hf_revision=self.hf_revision or "",
            approved_height=self.approved_height,
            status="approved",
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArtifactRecord:
        """Build from a registry cache entry (`to_dict`'s shape); missing required keys are
        errors, extra keys ignored, and legacy decimal-string versions become integers."""
        if not isinstance(raw, dict):
            raise InvalidArtifactRecord("record", "must be a JSON object")
        required = ("id", "kind", "version", "cid", "sha256", "size")
        for key in required:
            if key not in raw:
                raise InvalidArtifactRecord(key, "is missing")
        modules = raw.get("target_modules") or []
        if not isinstance(modules, list | tuple):
            raise InvalidArtifactRecord("target_modules", "must be a list of strings")
        return cls(
            id=raw["id"],
            kind=raw["kind"],
            version=_legacy_version("version", raw["version"]),
            cid=raw["cid"],
            sha256=raw["sha256"],
            size=raw["size"],
            base_model_id=raw.get("base_model_id") or None,
            base_model_version=_legacy_version("base_model_version", raw.get("base_model_version")),
            target_modules=tuple(modules),
            rank=raw.get("rank") or None,
            hf_repo=raw.get("hf_repo") or None,
            hf_revision=raw.get("hf_revision") or None,
            approved_height=_as_int("approved_height", raw.get("approved_height") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        """Inverse of `from_dict` (JSON-ready)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "version": self.version,
            "cid": self.cid,
            "sha256": self.sha256,
            "size": self.size,
            "base_model_id": self.base_model_id,
            "base_model_version": self.base_model_version,
            "target_modules": list(self.target_modules),
            "rank": self.rank,
            "hf_repo": self.hf_repo,
            "hf_revision": self.hf_revision,
            "approved_height": self.approved_height,
        }
