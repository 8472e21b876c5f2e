"""`ArtifactRecord`: the one artifact record outside the ledger's state.

The chain client lists artifacts as `ArtifactRecord`s, the registry caches and installs
them, the miner, validator, proposer and serving node work with them. The ledger keeps its
own consensus entry (`r3mes.chain.state.ArtifactRecord`: the registered `ArtifactSpec`, its
status and heights); `chain.views.record_of` is the one conversion from it, and `to_spec` /
`from_spec` convert to and from the spec a transaction carries.

A record holds what the ledger allows (ids may hold '/' or ':', a CID is any 1-128
alphanumerics), so a proposer can number versions past an entry no node could install.
Installing needs more (folder-safe names, a real CID): `r3mes.registry.records.installable`
checks that, explicitly, wherever a record becomes a folder.

The explicit conversions: `from_ledger` / `to_ledger` (the REST JSON: "" and 0 for absent,
a status), `from_dict` / `to_dict` (the registry's cache files: None for absent; versions
older caches wrote as decimal strings are converted), `from_spec` / `to_spec`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from r3mes.chain.errors import ChainError
from r3mes.chain.vocab import ARTIFACT_STATUSES, KINDS

if TYPE_CHECKING:
    from r3mes.chain.msgs import ArtifactSpec

_ID_RE = re.compile(r"^[A-Za-z0-9._/:-]{1,128}$")
_CID_RE = re.compile(r"^[A-Za-z0-9]{1,128}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_SIZE = 1 << 40
_MAX_VERSION = (1 << 63) - 1


class InvalidArtifactRecord(ChainError):
    """An artifact record (from the ledger, a cache file or a caller) is malformed."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid artifact record: {field} {reason}")


def _check_version(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_VERSION:
        raise InvalidArtifactRecord(field, "must be a non-negative integer")
    return value


def _check_id(field: str, value: object) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidArtifactRecord(field, "must be 1-128 chars of letters, digits, . _ / : -")
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


def _as_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArtifactRecord(field, "must be an integer")
    try:
        return int(value)
    except ValueError:
        raise InvalidArtifactRecord(field, "must be an integer") from None


@dataclass(frozen=True)
class ArtifactRecord:
    """One registered model, dataset or adapter (approved unless `status` says otherwise)."""

    id: str
    """Stable name, e.g. "bitnet-b1.58-tiny"."""
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
    """Ledger height at which the artifact was approved (0 while pending)."""
    status: str = "approved"
    """"approved" or "pending" (only the ledger's listings hold pending ones)."""

    def __post_init__(self) -> None:
        _check_id("id", self.id)
        _check_version("version", self.version)
        if self.kind not in KINDS:
            raise InvalidArtifactRecord("kind", f"must be one of {', '.join(KINDS)}")
        if not isinstance(self.cid, str) or not _CID_RE.match(self.cid):
            raise InvalidArtifactRecord("cid", f"{str(self.cid)[:80]!r} is not a CID")
        if not isinstance(self.sha256, str) or not _SHA_RE.match(self.sha256):
            raise InvalidArtifactRecord("sha256", "must be 64 lower-case hex characters")
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise InvalidArtifactRecord("size", "must be an integer")
        if not 0 <= self.size <= _MAX_SIZE:
            raise InvalidArtifactRecord("size", "must be between 0 and 1 TiB")
        if self.kind == "adapter":
            if self.base_model_id is None or self.base_model_version is None:
                raise InvalidArtifactRecord("base_model_id", "is required for adapters")
        if self.base_model_id is not None:
            _check_id("base_model_id", self.base_model_id)
        if self.base_model_version is not None:
            _check_version("base_model_version", self.base_model_version)
        for module in self.target_modules:
            if not isinstance(module, str) or not module:
                raise InvalidArtifactRecord("target_modules", "must be non-empty strings")
        if self.rank is not None and (
            isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0
        ):
            raise InvalidArtifactRecord("rank", "must be a positive integer")
        for name in ("hf_repo", "hf_revision"):
            if not isinstance(getattr(self, name), str | None):
                raise InvalidArtifactRecord(name, "must be a string")
        height = self.approved_height
        if isinstance(height, bool) or not isinstance(height, int) or height < 0:
            raise InvalidArtifactRecord("approved_height", "must be a non-negative integer")
        if self.status not in ARTIFACT_STATUSES:
            raise InvalidArtifactRecord("status", f"must be one of {ARTIFACT_STATUSES}")

    @property
    def ref(self) -> str:
        """Human reference "kind id@version"."""
        return f"{self.kind} {self.id}@{self.version}"

    # -- the ledger's REST JSON ("" / 0 for absent) ---------------------------------------

    @classmethod
    def from_ledger(cls, doc: object) -> ArtifactRecord:
        """A record from the ledger's JSON listing (integer versions, "" / 0 for absent);
        a record passes through unchanged."""
        if isinstance(doc, ArtifactRecord):
            return doc
        if not isinstance(doc, Mapping):
            raise InvalidArtifactRecord("record", "must be a JSON object")
        for key in ("version", "base_model_version"):
            if isinstance(doc.get(key), str):
                raise InvalidArtifactRecord(key, "the ledger numbers versions with integers")
        raw = dict(doc)
        if not raw.get("base_model_id"):
            raw["base_model_id"] = raw["base_model_version"] = None
        raw.setdefault("status", "approved")
        return cls.from_dict(raw)

    def to_ledger(self) -> dict[str, Any]:
        """The ledger's JSON listing of this record: the inverse of `from_ledger`."""
        return {
            "id": self.id,
            "kind": self.kind,
            "version": self.version,
            "cid": self.cid,
            "sha256": self.sha256,
            "size": self.size,
            "base_model_id": self.base_model_id or "",
            "base_model_version": self.base_model_version or 0,
            "target_modules": list(self.target_modules),
            "rank": self.rank or 0,
            "hf_repo": self.hf_repo or "",
            "hf_revision": self.hf_revision or "",
            "approved_height": self.approved_height,
            "status": self.status,
        }

    # -- the registry's cache files (None for absent) -------------------------------------

    @classmethod
    def from_dict(cls, raw: object) -> ArtifactRecord:
        """Build from `to_dict`'s shape; missing required keys are errors, extra keys are
        ignored, and legacy decimal-string versions become integers."""
        if not isinstance(raw, Mapping):
            raise InvalidArtifactRecord("record", "must be a JSON object")
        for key in ("id", "kind", "version", "cid", "sha256", "size"):
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
            status=raw.get("status", "approved"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Inverse of `from_dict` (JSON-ready; the registry caches approved records only)."""
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

    # -- the spec a RegisterArtifact transaction carries ----------------------------------

    @classmethod
    def from_spec(
        cls, spec: ArtifactSpec, *, status: str = "approved", approved_height: int = 0
    ) -> ArtifactRecord:
        """The record of a registered spec (what the ledger lists once it holds it)."""
        return cls(
            id=spec.id,
            kind=spec.kind,
            version=spec.version,
            cid=spec.cid,
            sha256=spec.sha256,
            size=spec.size,
            base_model_id=spec.base_model_id or None,
            base_model_version=spec.base_model_version if spec.base_model_id else None,
            target_modules=tuple(spec.target_modules),
            rank=spec.rank or None,
            hf_repo=spec.hf_repo or None,
            hf_revision=spec.hf_revision or None,
            approved_height=approved_height,
            status=status,
        )

    def to_spec(self) -> ArtifactSpec:
        """The spec that registers this record on the ledger: the inverse of `from_spec`."""
        from r3mes.chain.msgs import ArtifactSpec
        from r3mes.chain.vocab import one_of

        return ArtifactSpec(
            kind=one_of(self.kind, KINDS, "artifact kind"),
            id=self.id,
            version=self.version,
            cid=self.cid,
            sha256=self.sha256,
            size=self.size,
            base_model_id=self.base_model_id or "",
            base_model_version=self.base_model_version or 0,
            target_modules=tuple(self.target_modules),
            rank=self.rank or 0,
            hf_repo=self.hf_repo or "",
            hf_revision=self.hf_revision or "",
        )
