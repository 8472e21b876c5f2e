"""Model, dataset and adapter registries: approved records from the chain, installed locally.

Each registry keeps the last synced approved list in `$R3MES_HOME/cache/registry-<kind>.json`
so it works offline after one sync, and installs artifacts through a `DownloadManager`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from r3mes.registry.download import DownloadManager
from r3mes.registry.errors import (
    AdapterConflict,
    ArtifactNotFound,
    IncompatibleAdapter,
    InvalidArtifactRecord,
    RegistryError,
)
from r3mes.registry.local import LocalArtifacts, write_json_atomic
from r3mes.registry.records import (
    ArtifactRecord,
    ArtifactSource,
    installable,
    record_from_cache,
)
from r3mes.storage.tempfiles import TEMP_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """What `sync_from_chain` accepted and what it rejected (with reasons)."""

    records: tuple[ArtifactRecord, ...]
    rejected: tuple[str, ...]


class ArtifactRegistry:
    """Approved artifacts of one kind."""

    kind = "model"

    def __init__(
        self,
        *,
        local: LocalArtifacts,
        downloader: DownloadManager,
        source: ArtifactSource | None = None,
    ) -> None:
        self.local = local
        self.downloader = downloader
        self.source = source

    @property
    def _cache_file(self) -> Path:
        return self.local.home.cache / f"registry-{self.kind}.json"

    def sync_from_chain(self) -> SyncResult:
        """Replace the cached approved list with the chain's; malformed entries are rejected.
        A cache that cannot be written is a StorageWriteError and the old list stays."""
        result = self.fetch_from_chain()
        self.store_records(result.records)
        return result

    def fetch_from_chain(self) -> SyncResult:
        """The chain's approved list, validated; nothing is written."""
        if self.source is None:
            raise RegistryError("no chain client configured; pass --chain URL or R3MES_CHAIN_URL")
        accepted: list[ArtifactRecord] = []
        rejected: list[str] = []
        for raw in self.source.approved_artifacts(kind=self.kind):
            try:
                record = installable(ArtifactRecord.from_ledger(raw))
            except InvalidArtifactRecord as exc:
                name = raw.get("id", "?") if isinstance(raw, dict) else getattr(raw, "id", "?")
                rejected.append(f"{str(name)[:64]}: {exc}")
                log.warning("rejected approved %s entry: %s", self.kind, exc)
                continue
            if record.kind == self.kind:
                accepted.append(record)
        accepted.sort(key=lambda r: (r.id, r.approved_height, r.version))
        return SyncResult(tuple(accepted), tuple(rejected))

    def store_records(self, records: tuple[ArtifactRecord, ...] | list[ArtifactRecord]) -> None:
        """Write the approved list to the cache (atomically)."""
        write_json_atomic(self._cache_file, [r.to_dict() for r in records])

    def records(self) -> list[ArtifactRecord]:
        """The approved list from the last sync (empty before the first)."""
        try:
            raw = json.loads(self._cache_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise RegistryError(
                f"registry cache {self._cache_file} is unreadable ({exc}); "
                "run `r3mes registry sync`"
            ) from exc
        if not isinstance(raw, list):
            raise RegistryError(
                f"registry cache {self._cache_file} is not a list; run `r3mes registry sync`"
            )
        try:
            return [record_from_cache(item) for item in raw]
        except InvalidArtifactRecord as exc:
            raise RegistryError(
                f"registry cache {self._cache_file} holds a bad entry ({exc}); "
                "run `r3mes registry sync`"
            ) from exc

    def get(self, artifact_id: str, version: int | None = None) -> ArtifactRecord:
        """The record for id (and version); without a version, the latest approved one."""
        matches = [r for r in self.records() if r.id == artifact_id]
        if version is not None:
            matches = [r for r in matches if r.version == version]
        if not matches:
            raise ArtifactNotFound(self.kind, artifact_id, version)
        return max(matches, key=lambda r: r.approved_height)

    def is_ready(self, record: ArtifactRecord) -> bool:
        return self.local.is_installed(record)

    def path(self, record: ArtifactRecord) -> Path:
        return self.local.path_for(record)

    def pull(self, artifact_id: str, version: int | None = None, *, force: bool = False) -> Path:
        """Download and install (if needed); return the installed folder."""
        record = self.get(artifact_id, version)
        return self.install(record, force=force)

    def install(self, record: ArtifactRecord, *, force: bool = False) -> Path:
        if not force and self.local.is_installed(record):
            return self.local.path_for(record)
        cache = self.local.home.cache / "downloads"
        # a temp name, so a payload left by a process killed before the install is cleaned up
        payload = self.downloader.download(record, cache / f"{TEMP_PREFIX}{record.sha256}.artifact")
        try:
            return self.local.install(record, payload)
        finally:
            payload.unlink(missing_ok=True)

    def verify(self, artifact_id: str, version: int | None = None) -> bool:
        return self.local.verify(self.get(artifact_id, version))


class ModelRegistry(ArtifactRegistry):
    """Approved base models (bundled folders)."""

    kind = "model"


class DatasetRegistry(ArtifactRegistry):
    """Approved datasets (single files), with streaming reads."""

    kind = "dataset"

    def stream(self, artifact_id: str, version: int | None = None) -> Iterator[bytes]:
        """Iterate the dataset's lines without loading it whole (pulls it first if needed)."""
        record = self.get(artifact_id, version)
        self.install(record)
        return self.local.iter_lines(record)


class AdapterRegistry(ArtifactRegistry):
    """Approved LoRA adapters, with compatibility and conflict checks."""

    kind = "adapter"

    def __init__(
        self,
        *,
        local: LocalArtifacts,
        downloader: DownloadManager,
        models: ModelRegistry,
        source: ArtifactSource | None = None,
    ) -> None:
        super().__init__(local=local, downloader=downloader, source=source)
        self.models = models

    @property
    def _active_file(self) -> Path:
        return self.local.home.cache / "active-adapters.json"

    def check_compatibility(self, record: ArtifactRecord) -> tuple[bool, str]:
        """Is the adapter's base model approved or installed? Checked before any download."""
        wanted = (record.base_model_id, record.base_model_version)
        for model in self.models.records():
            if (model.id, model.version) == wanted:
                return True, f"base model {model.id}@{model.version} is approved"
        return False, f"base model {wanted[0]}@{wanted[1]} is not an approved model"

    def active(self) -> dict[str, int]:
        """Active adapters: id -> version (older files' decimal-string versions are read as
        integers)."""
        try:
            data = json.loads(self._active_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{self._active_file} is unreadable ({exc}); delete it") from exc
        try:
            return {str(k): int(v) for k, v in data.items() if not isinstance(v, bool)}
        except (TypeError, ValueError, AttributeError) as exc:
            raise RegistryError(f"{self._active_file} is malformed ({exc}); delete it") from exc

    def check_conflicts(self, record: ArtifactRecord) -> list[str]:
        """Active adapters that clash: same id at another version, or another base model."""
        conflicts = []
        for active_id, active_version in sorted(self.active().items()):
            if active_id == record.id:
                if active_version != record.version:
                    conflicts.append(f"{active_id}@{active_version} (same id, other version)")
                continue
            try:
                other = self.get(active_id, active_version)
            except ArtifactNotFound:
                continue
            if (other.base_model_id, other.base_model_version) != (
                record.base_model_id,
                record.base_model_version,
            ):
                conflicts.append(f"{active_id}@{active_version} (other base model)")
        return conflicts

    def activate(self, record: ArtifactRecord, *, replace: bool = False) -> None:
        """Mark an installed adapter active; `replace` swaps out another version of it."""
        ok, reason = self.check_compatibility(record)
        if not ok:
            raise IncompatibleAdapter(record.ref, reason)
        conflicts = self.check_conflicts(record)
        if replace:
            conflicts = [c for c in conflicts if not c.startswith(f"{record.id}@")]
        if conflicts:
            raise AdapterConflict(record.ref, conflicts)
        if not self.local.is_installed(record):
            raise RegistryError(f"{record.ref} is not installed; pull it first")
        self.set_active({**self.active(), record.id: record.version})

    def set_active(self, active: dict[str, int]) -> None:
        write_json_atomic(self._active_file, active)

    def pull(self, artifact_id: str, version: int | None = None, *, force: bool = False) -> Path:
        """Check compatibility before downloading anything, then pull."""
        record = self.get(artifact_id, version)
        ok, reason = self.check_compatibility(record)
        if not ok:
            raise IncompatibleAdapter(record.ref, reason)
        return self.install(record, force=force)
