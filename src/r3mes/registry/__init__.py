"""r3mes.registry: approved models, datasets and adapters, synced from the chain and installed
locally through verified, atomic downloads."""

from r3mes.registry.bundle import pack_dir, unpack_bundle
from r3mes.registry.download import DownloadManager
from r3mes.registry.records import ArtifactRecord, ArtifactSource
from r3mes.registry.registries import AdapterRegistry, DatasetRegistry, ModelRegistry
from r3mes.registry.unified import ReadyResult, UnifiedRegistry

__all__ = [
    "AdapterRegistry",
    "ArtifactRecord",
    "ArtifactSource",
    "DatasetRegistry",
    "DownloadManager",
    "ModelRegistry",
    "ReadyResult",
    "UnifiedRegistry",
    "pack_dir",
    "unpack_bundle",
]
