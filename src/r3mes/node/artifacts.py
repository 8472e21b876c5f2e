"""Artifacts by CID, made local once per node: base models, datasets, adapter versions.

The miner, the validator and the proposer name artifacts by the CIDs a round lists; the
serving node names them by id. Both go the same way: the CID is looked up among the
ledger's approved records (`r3mes.registry.ArtifactRecord`, synced again when a CID is not
known yet) and `UnifiedRegistry` installs it - fetched from the role's content store (local
blockstore, Kubo behind it) with every block checked against its CID and the whole file
against the approved SHA-256, unpacked into a staging folder and renamed into place, so a
crash never leaves a half-written artifact behind. Loaded models, datasets and adapters
are kept in memory (LRU).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from r3mes.node.errors import NetworkError, ValidationError

if TYPE_CHECKING:
    import torch

    from r3mes.model.lora import LoraConfig
    from r3mes.model.modeling import BitNetForCausalLM
    from r3mes.registry.download import Progressed
    from r3mes.registry.records import ArtifactRecord, ArtifactSource
    from r3mes.work.data import TokenDataset

logger = logging.getLogger(__name__)

MAX_BYTES = {"model": 16 << 30, "dataset": 64 << 30, "adapter": 1 << 30}
"""Largest artifact of each kind a worker accepts, whatever the ledger approved."""


class BlobStore(Protocol):
    def get_bytes(self, cid: str, *, max_size: int = ...) -> bytes: ...

    def add_bytes(self, data: bytes, *, cid_version: int = 1, pin: bool = True) -> str: ...

    def unpin(self, cid: str) -> None: ...


class ContentStoreFetcher:
    """The registry's `ArtifactFetcher` over a role's content store (CID-verified reads)."""

    name = "content store"

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def fetch(
        self,
        record: ArtifactRecord,
        dest: Path,
        on_bytes: Progressed = None,
        *,
        deadline: float | None = None,
    ) -> None:
        data = self.store.get_bytes(record.cid, max_size=record.size)
        dest.write_bytes(data)
        if on_bytes is not None:
            on_bytes(len(data))


def _check_cid(cid: str) -> str:
    if not cid or not cid.isalnum() or len(cid) > 128:
        raise ValidationError(f"{cid[:80]!r} is not a CID")
    return cid


class ArtifactCache:
    """Approved artifacts by CID, installed through the registry and kept (LRU) in memory."""

    def __init__(
        self,
        *,
        store: BlobStore,
        root: Path,
        source: ArtifactSource,
        max_loaded: int = 4,
        gradient_checkpointing: str = "auto",
    ) -> None:
        """`gradient_checkpointing` ("auto", "on", "off") is set on every base model loaded
        here (`r3mes.work.training.set_gradient_checkpointing`): training on it recomputes
        each layer in the backward, for less memory and identical update bytes."""
        from r3mes.paths import Home
        from r3mes.registry.download import DownloadManager
        from r3mes.registry.unified import UnifiedRegistry
        from r3mes.work.errors import TrainingError
        from r3mes.work.training import check_gradient_checkpointing

        self.store = store
        self.root = root
        self.registry = UnifiedRegistry(
            home=Home(root=root),
            downloader=DownloadManager([ContentStoreFetcher(store)]),
            source=source,
        )
        self._lock = threading.RLock()
        self._loaded: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._max_loaded = max_loaded
        try:  # a bad mode fails here, at start-up, not at the first model
            check_gradient_checkpointing(gradient_checkpointing)
        except TrainingError as exc:
            raise ValidationError(str(exc)) from exc
        self.gradient_checkpointing = gradient_checkpointing

    def _known(self, cid: str) -> ArtifactRecord | None:
        return next((r for r in self.registry.all_records() if r.cid == cid), None)

    def record(self, cid: str, kind: str) -> ArtifactRecord:
        """The approved `kind` record of `cid` (the ledger is asked again when unknown)."""
        with self._lock:
            record = self._known(_check_cid(cid))
            if record is None:
                self.registry.sync_all()  # approved since the last look, perhaps
                record = self._known(cid)
        if record is None:
            raise ValidationError(f"{cid} is not an approved artifact on the ledger")
        if record.kind != kind:
            raise ValidationError(f"{cid} is an approved {record.kind}, not the {kind} asked for")
        if record.size > MAX_BYTES[kind]:
            raise ValidationError(f"{record.ref} is {record.size} bytes, over the {kind} limit")
        return record

    def path(self, cid: str, kind: str) -> Path:
        """The installed folder of the approved `kind` artifact `cid`."""
        from r3mes.registry.errors import DownloadFailed, InvalidArtifactRecord, RegistryError
        from r3mes.storage.errors import StorageError

        record = self.record(cid, kind)
        with self._lock:
            try:
                return self.registry.registry_for(kind).install(record)
            except DownloadFailed as exc:
                raise NetworkError(f"could not fetch {record.ref} ({cid}): {exc}") from exc
            except (RegistryError, InvalidArtifactRecord) as exc:
                raise ValidationError(f"{record.ref} ({cid}) is not usable: {exc}") from exc
            except StorageError as exc:
                raise NetworkError(f"could not install {record.ref} ({cid}): {exc}") from exc

    def is_loaded(self, kind: str, cid: str) -> bool:
        """Whether the `kind` ("model", "dataset", "adapter") artifact `cid` is in memory."""
        with self._lock:
            return (kind, cid) in self._loaded

    def _remember(self, key: tuple[str, str], value: object) -> None:
        self._loaded[key] = value
        self._loaded.move_to_end(key)
        while len(self._loaded) > self._max_loaded:
            self._loaded.popitem(last=False)

    def _cached(self, key: tuple[str, str]) -> object | None:
        cached = self._loaded.get(key)
        if cached is not None:
            self._loaded.move_to_end(key)
        return cached

    def _discard(self, cid: str, kind: str) -> None:
        """Drop an installed copy that does not load, so the next try fetches it afresh."""
        self.registry.local.remove(self.record(cid, kind))

    def model(self, cid: str) -> BitNetForCausalLM:
        """The base model in the bundle `cid` (loaded once; backbone frozen)."""
        from r3mes.model.checkpoint import load_pretrained
        from r3mes.model.errors import ModelError
        from r3mes.work.training import set_gradient_checkpointing

        key = ("model", cid)
        with self._lock:
            cached = self._cached(key)
            if cached is not None:
                return cached  # type: ignore[return-value]
            try:
                model = load_pretrained(self.path(cid, "model"))
            except ModelError as exc:
                self._discard(cid, "model")
                raise ValidationError(f"base model {cid} does not load: {exc}") from exc
            model.eval()
            on = set_gradient_checkpointing(model, self.gradient_checkpointing)
            logger.info("base model %s loaded, gradient checkpointing %s", cid, on)
            self._remember(key, model)
            return model

    def dataset(self, cid: str) -> TokenDataset:
        """The token dataset file `cid`."""
        from r3mes.registry.local import DATASET_FILE
        from r3mes.work.data import TokenDataset
        from r3mes.work.errors import DatasetError

        key = ("dataset", cid)
        with self._lock:
            cached = self._cached(key)
            if cached is not None:
                return cached  # type: ignore[return-value]
            try:
                dataset = TokenDataset(self.path(cid, "dataset") / DATASET_FILE)
            except DatasetError as exc:
                self._discard(cid, "dataset")
                raise ValidationError(f"dataset {cid} is unreadable: {exc}") from exc
            self._remember(key, dataset)
            return dataset

    def adapter(self, cid: str) -> tuple[dict[str, torch.Tensor], LoraConfig]:
        """The PEFT adapter in the bundle `cid`: (state, config)."""
        from r3mes.model.errors import ModelError
        from r3mes.model.peft_io import load_peft_adapter

        key = ("adapter", cid)
        with self._lock:
            cached = self._cached(key)
            if cached is not None:
                return cached  # type: ignore[return-value]
            try:
                state, config, _ = load_peft_adapter(self.path(cid, "adapter"))
            except ModelError as exc:
                self._discard(cid, "adapter")
                raise ValidationError(f"adapter {cid} does not load: {exc}") from exc
            self._remember(key, (state, config))
            return state, config
