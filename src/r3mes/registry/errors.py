"""Errors raised by `r3mes.registry`; each names the artifact and says what to do.

`InvalidArtifactRecord` is the artifact record's own error (`r3mes.chain.artifact_record`,
where the one record type lives); the registry raises it too, for a record it cannot
install, so callers catch it next to `RegistryError`."""

from __future__ import annotations

from r3mes.chain.artifact_record import InvalidArtifactRecord
from r3mes.errors import R3mesError

__all__ = [
    "AdapterConflict",
    "ArtifactNotFound",
    "BundleError",
    "ChecksumMismatch",
    "DownloadFailed",
    "IncompatibleAdapter",
    "InvalidArtifactRecord",
    "RegistryError",
]


class RegistryError(R3mesError):
    """Base class of every registry error."""


class ArtifactNotFound(RegistryError):
    """No approved artifact with this id (and version) is known."""

    def __init__(self, kind: str, artifact_id: str, version: int | None = None) -> None:
        self.kind = kind
        self.artifact_id = artifact_id
        self.version = version
        what = f"{artifact_id}@{version}" if version is not None else artifact_id
        super().__init__(
            f"no approved {kind} {what!r}; run `r3mes registry sync` "
            "and check `r3mes registry list`"
        )


class ChecksumMismatch(RegistryError):
    """Downloaded bytes do not match the approved SHA-256 (or size)."""

    def __init__(self, artifact: str, source: str, detail: str) -> None:
        self.artifact = artifact
        self.source = source
        self.detail = detail
        super().__init__(
            f"{artifact} from {source} failed its checksum ({detail}); bytes discarded"
        )


class DownloadFailed(RegistryError):
    """Every source failed for an artifact."""

    def __init__(self, artifact: str, reasons: list[str]) -> None:
        self.artifact = artifact
        self.reasons = reasons
        joined = "; ".join(reasons) if reasons else "no source is configured"
        super().__init__(
            f"could not download {artifact}: {joined}. Start an IPFS node (R3MES_IPFS_URL) "
            "or add the file locally with `r3mes storage add`"
        )


class IncompatibleAdapter(RegistryError):
    """An adapter was trained for a different base model."""

    def __init__(self, artifact: str, reason: str) -> None:
        self.artifact = artifact
        self.reason = reason
        super().__init__(f"adapter {artifact} is incompatible: {reason}")


class AdapterConflict(RegistryError):
    """Activating an adapter would clash with an active one."""

    def __init__(self, artifact: str, conflicts: list[str]) -> None:
        self.artifact = artifact
        self.conflicts = conflicts
        super().__init__(
            f"adapter {artifact} conflicts with active adapters: {', '.join(conflicts)}; "
            "deactivate them first"
        )


class BundleError(RegistryError):
    """A directory bundle is unsafe or malformed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"bad artifact bundle: {reason}")
