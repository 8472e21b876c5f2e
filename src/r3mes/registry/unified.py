"""UnifiedRegistry: one entry point for models, datasets and adapters, with all-or-nothing
preparation (`ensure_ready_atomic`) for miners and serving nodes."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from r3mes.paths import Home
from r3mes.registry.download import DownloadManager
from r3mes.registry.errors import ArtifactNotFound, InvalidArtifactRecord, RegistryError
from r3mes.registry.local import LocalArtifacts
from r3mes.registry.records import ArtifactRecord, ArtifactSource
from r3mes.registry.registries import (
    AdapterRegistry,
    ArtifactRegistry,
    DatasetRegistry,
    ModelRegistry,
    SyncResult,
)
from r3mes.storage.errors import StorageError

log = logging.getLogger(__name__)
VERIFY_KINDS = ("adapter", "dataset")
"""Kinds `ensure_ready_atomic` re-hashes when already installed (models can be gigabytes)."""


@dataclass(frozen=True)
class ReadyResult:
    """Outcome of `ensure_ready_atomic`: everything ready, or nothing changed and why."""

    success: bool
    model_path: Path | None = None
    adapter_paths: dict[str, Path] = field(default_factory=dict)
    dataset_path: Path | None = None
    downloaded: tuple[str, ...] = ()
    """References of artifacts fetched by this call (rolled back on failure)."""
    error_message: str = ""


class UnifiedRegistry:
    """Models, datasets and adapters behind one object."""

    def __init__(
        self, *, home: Home, downloader: DownloadManager, source: ArtifactSource | None = None
    ) -> None:
        local = LocalArtifacts(home)
        self.models = ModelRegistry(local=local, downloader=downloader, source=source)
        self.datasets = DatasetRegistry(local=local, downloader=downloader, source=source)
        self.adapters = AdapterRegistry(
            local=local, downloader=downloader, models=self.models, source=source
        )
        self.local = local

    def registry_for(self, kind: str) -> ArtifactRegistry:
        return {"model": self.models, "dataset": self.datasets}.get(kind, self.adapters)

    def sync_all(self) -> dict[str, SyncResult]:
        """Sync every kind from the chain: all three cached lists are replaced, or (when one
        cannot be written) none is."""
        registries: tuple[ArtifactRegistry, ...] = (self.models, self.datasets, self.adapters)
        results = {r.kind: r.fetch_from_chain() for r in registries}
        previous = {r.kind: self._cached_or_none(r) for r in registries}
        stored: list[ArtifactRegistry] = []
        try:
            for registry in registries:
                registry.store_records(results[registry.kind].records)
                stored.append(registry)
        except StorageError:
            for registry in stored:
                old = previous[registry.kind]
                if old is None:
                    continue
                try:
                    registry.store_records(old)
                except StorageError as exc:
                    log.error("could not restore the %s list: %s", registry.kind, exc)
            raise
        return results

    @staticmethod
    def _cached_or_none(registry: ArtifactRegistry) -> list[ArtifactRecord] | None:
        try:
            return registry.records()
        except RegistryError:
            return None  # unreadable: a fresh list can only be better

    def all_records(self) -> list[ArtifactRecord]:
        return [r for reg in (self.models, self.datasets, self.adapters) for r in reg.records()]

    def find(self, artifact_id: str, version: int | None = None) -> ArtifactRecord:
        """Look an id up in every kind (models first)."""
        for reg in (self.models, self.datasets, self.adapters):
            try:
                return reg.get(artifact_id, version)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound("artifact", artifact_id, version)

    def ensure_ready_atomic(
        self,
        *,
        required_adapters: list[str] | tuple[str, ...] = (),
        require_dataset: str | None = None,
        model_id: str | None = None,
        verify: Collection[str] = VERIFY_KINDS,
    ) -> ReadyResult:
        """Make the model, the required adapters (activated) and the dataset ready, or change
        nothing: artifacts this call installed are removed and active adapters restored.

        Installed artifacts of the kinds in `verify` are re-hashed against their manifest
        first (adapters and datasets by default: small next to a model); a copy that fails
        is downloaded again. Any failure, a read-only or full disk included, gives a result
        with `success=False` and the reason, never an exception.
        """
        installed: list[ArtifactRecord] = []
        active_before: dict[str, int] | None = None
        try:
            active_before = self.adapters.active()
            plan = self._plan(required_adapters, require_dataset, model_id)
            paths: dict[str, Path] = {}
            for record in plan:
                ready = self.local.is_installed(record)
                if ready and record.kind in verify and not self.local.verify(record):
                    log.warning("installed %s fails its checksums; fetching it again", record.ref)
                    ready = False
                registry = self.registry_for(record.kind)
                paths[f"{record.kind}:{record.id}"] = registry.install(record, force=not ready)
                if not ready:
                    installed.append(record)
            for record in plan:
                if record.kind == "adapter":
                    self.adapters.activate(record, replace=True)
        except (RegistryError, InvalidArtifactRecord, StorageError, OSError) as exc:
            self._rollback(installed, active_before)
            log.error("ensure_ready_atomic failed, rolled back: %s", exc)
            return ReadyResult(success=False, error_message=str(exc))
        return ReadyResult(
            success=True,
            model_path=next(p for k, p in paths.items() if k.startswith("model:")),
            adapter_paths={k[8:]: p for k, p in paths.items() if k.startswith("adapter:")},
            dataset_path=next((p for k, p in paths.items() if k.startswith("dataset:")), None),
            downloaded=tuple(r.ref for r in installed),
        )

    def _plan(
        self, adapters: list[str] | tuple[str, ...], dataset: str | None, model_id: str | None
    ) -> list[ArtifactRecord]:
        """Resolve every record and run every check before anything is downloaded."""
        models = self.models.records()
        if model_id is not None:
            model = self.models.get(model_id)
        elif models:
            model = max(models, key=lambda r: r.approved_height)
        else:
            raise RegistryError("no approved model; run `r3mes registry sync`")
        plan = [model]
        for adapter_id in adapters:
            record = self.adapters.get(adapter_id)
            if (record.base_model_id, record.base_model_version) != (model.id, model.version):
                raise RegistryError(
                    f"adapter {record.id}@{record.version} needs base model "
                    f"{record.base_model_id}@{record.base_model_version}, "
                    f"not {model.id}@{model.version}"
                )
            plan.append(record)
        if dataset is not None:
            plan.append(self.datasets.get(dataset))
        return plan

    def _rollback(
        self, installed: list[ArtifactRecord], active_before: dict[str, int] | None
    ) -> None:
        for record in reversed(installed):
            try:
                self.local.remove(record)
            except OSError as exc:
                log.error("rollback could not remove %s: %s", record.ref, exc)
        if active_before is None:
            return  # the active list was never read, so never written
        try:
            if self.adapters.active() != active_before:
                self.adapters.set_active(active_before)
        except (RegistryError, StorageError) as exc:
            log.error("rollback could not restore active adapters: %s", exc)
