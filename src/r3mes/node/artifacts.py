"""Artifacts by CID, made local once per node: base models, datasets, adapter versions.

Every byte comes from a content store (`r3mes.storage`: the local blockstore or Kubo) that
verifies each block against its CID, so a CID names exactly one content and nothing else
needs trusting. Folders travel as the registry's deterministic bundles
(`r3mes.registry.bundle`); a dataset is a single file. Unpacked copies live under the
node's cache folder, written to a temporary name and renamed, so a crash never leaves a
half-written artifact behind. Loaded models and adapters are kept in memory (LRU).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from r3mes.node.errors import NetworkError, ValidationError

if TYPE_CHECKING:
    import torch

    from r3mes.model.lora import LoraConfig
    from r3mes.model.modeling import BitNetForCausalLM
    from r3mes.work.data import TokenDataset

logger = logging.getLogger(__name__)

MAX_MODEL_BYTES = 16 << 30
MAX_DATASET_BYTES = 64 << 30
MAX_ADAPTER_BYTES = 1 << 30


class BlobStore(Protocol):
    def get_bytes(self, cid: str, *, max_size: int = ...) -> bytes: ...

    def add_bytes(self, data: bytes, *, cid_version: int = 1, pin: bool = True) -> str: ...

    def unpin(self, cid: str) -> None: ...


def _check_cid(cid: str) -> str:
    if not cid or not cid.isalnum() or len(cid) > 128:
        raise ValidationError(f"{cid[:80]!r} is not a CID")
    return cid


class ArtifactCache:
    """Local copies of artifacts, loaded on demand and kept (LRU) in memory."""

    def __init__(self, *, store: BlobStore, root: Path, max_loaded: int = 4) -> None:
        self.store = store
        self.root = root
        self._lock = threading.RLock()
        self._loaded: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._max_loaded = max_loaded

    def _fetch(self, cid: str, max_size: int) -> bytes:
        from r3mes.storage.errors import StorageError

        try:
            return self.store.get_bytes(_check_cid(cid), max_size=max_size)
        except StorageError as exc:
            raise NetworkError(f"could not fetch {cid}: {exc}") from exc

    def folder(self, cid: str, *, max_size: int = MAX_MODEL_BYTES) -> Path:
        """The unpacked bundle named by `cid`."""
        from r3mes.registry.bundle import unpack_bundle
        from r3mes.registry.errors import BundleError

        dest = self.root / "bundles" / _check_cid(cid)
        with self._lock:
            if dest.is_dir():
                return dest
            data = self._fetch(cid, max_size)
            try:
                unpack_bundle(data, dest)
            except BundleError as exc:
                raise ValidationError(f"artifact {cid} is not a valid bundle: {exc}") from exc
        return dest

    def file(self, cid: str, *, max_size: int = MAX_DATASET_BYTES) -> Path:
        """The single-file artifact named by `cid`."""
        dest = self.root / "files" / _check_cid(cid)
        with self._lock:
            if dest.is_file():
                return dest
            data = self._fetch(cid, max_size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{cid}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        return dest

    def is_loaded(self, kind: str, cid: str) -> bool:
        """Whether the `kind` ("model", "dataset", "adapter") artifact `cid` is in memory."""
        with self._lock:
            return (kind, cid) in self._loaded

    def _remember(self, key: tuple[str, str], value: object) -> None:
        self._loaded[key] = value
        self._loaded.move_to_end(key)
        while len(self._loaded) > self._max_loaded:
            self._loaded.popitem(last=False)

    def model(self, cid: str) -> BitNetForCausalLM:
        """The base model in the bundle `cid` (loaded once; backbone frozen)."""
        from r3mes.model.checkpoint import load_pretrained
        from r3mes.model.errors import ModelError

        key = ("model", cid)
        with self._lock:
            cached = self._loaded.get(key)
            if cached is not None:
                self._loaded.move_to_end(key)
                return cached  # type: ignore[return-value]
            try:
                model = load_pretrained(self.folder(cid))
            except ModelError as exc:
                self._discard("bundles", cid)
                raise ValidationError(f"base model {cid} does not load: {exc}") from exc
            model.eval()
            self._remember(key, model)
            return model

    def dataset(self, cid: str) -> TokenDataset:
        """The token dataset file `cid`."""
        from r3mes.work.data import TokenDataset
        from r3mes.work.errors import DatasetError

        key = ("dataset", cid)
        with self._lock:
            cached = self._loaded.get(key)
            if cached is not None:
                return cached  # type: ignore[return-value]
            try:
                dataset = TokenDataset(self.file(cid))
            except DatasetError as exc:
                self._discard("files", cid)
                raise ValidationError(f"dataset {cid} is unreadable: {exc}") from exc
            self._remember(key, dataset)
            return dataset

    def adapter(self, cid: str) -> tuple[dict[str, torch.Tensor], LoraConfig]:
        """The PEFT adapter in the bundle `cid`: (state, config)."""
        from r3mes.model.errors import ModelError
        from r3mes.model.peft_io import load_peft_adapter

        key = ("adapter", cid)
        with self._lock:
            cached = self._loaded.get(key)
            if cached is not None:
                return cached  # type: ignore[return-value]
            try:
                state, config, _ = load_peft_adapter(self.folder(cid, max_size=MAX_ADAPTER_BYTES))
            except ModelError as exc:
                self._discard("bundles", cid)
                raise ValidationError(f"adapter {cid} does not load: {exc}") from exc
            self._remember(key, (state, config))
            return state, config

    def _discard(self, kind: str, cid: str) -> None:
        path = self.root / kind / cid
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
