"""UnifiedRegistry: one entry point for models, datasets and adapters, with all-or-nothing
preparation (`ensure_ready_atomic`) for miners and serving nodes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from r3mes.paths import Home
from r3mes.registry.download import DownloadManager
from r3mes.registry.errors import RegistryError
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
        """Sync every kind from the chain."""
        return {r.kind: r.sync_from_chain() for r in (self.models, self.datasets, self.adapters)}

    def all_records(self) -> list[ArtifactRecord]:
        return [r for reg in (self.models, self.datasets, self.adapters) for r in reg.records()]

    def find(self, artifact_id: str, version: str | None = None) -> ArtifactRecord:
        """Look an id up in every kind (models first)."""
        last: RegistryError | None = None
        for reg in (self.models, self.datasets, self.adapters):
            try:
                return reg.get(artifact_id, version)
            except RegistryError as exc:
                last = exc
        assert last is not None
        raise last

    def ensure_ready_atomic(
        self,
        *,
        required_adapters: list[str] | tuple[str, ...] = (),
        require_dataset: str | None = None,
        model_id: str | None = None,
    ) -> ReadyResult:
        """Make the model, the required adapters (activated) and the dataset ready, or change
        nothing: artifacts this call installed are removed and active adapters restored."""
        installed: list[ArtifactRecord] = []
        active_before = self.adapters.active()
        try:
            plan = self._plan(required_adapters, require_dataset, model_id)
            paths: dict[str, Path] = {}
            for record in plan:
                was_ready = self.local.is_installed(record)
                paths[f"{record.kind}:{record.id}"] = self.registry_for(record.kind).install(record)
                if not was_ready:
                    installed.append(record)
            for record in plan:
                if record.kind == "adapter":
                    self.adapters.activate(record, replace=True)
        except (RegistryError, StorageError) as exc:
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

    def _rollback(self, installed: list[ArtifactRecord], active_before: dict[str, str]) -> None:
        for record in reversed(installed):
            try:
                self.local.remove(record)
            except OSError as exc:
                log.error("rollback could not remove %s: %s", record.ref, exc)
        try:
            self.adapters.set_active(active_before)
        except OSError as exc:
            log.error("rollback could not restore active adapters: %s", exc)
