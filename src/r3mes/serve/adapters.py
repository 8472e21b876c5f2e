"""Adapters on the host: a registry of sources and an LRU cache of loaded weights.

An adapter is registered under a public name with a *source*: a PEFT directory, or a
loader callable (the registry package feeds adapters this way). Registering loads it once
to check it, and every registration gets a fresh serial number; the engine keys the copy it
puts into the model by that serial, so re-registering a name (a new version) never changes
the weights under a request that is already decoding.

The cache keeps at most `max_cpu_loras` loaded adapters in host memory; a request for an
evicted one reloads it from its source (a cache miss).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from r3mes.errors import R3mesError
from r3mes.model.lora import LoraConfig
from r3mes.serve.errors import AdapterLoadError, AdapterNotFound, InvalidRequest, ServeError

log = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter's weights in host memory."""

    state: dict[str, torch.Tensor]
    """PEFT-named tensors (`base_model.model....lora_A.weight`)."""
    config: LoraConfig
    """Rank, alpha and target modules."""
    base_model_name: str
    """The base model the adapter was trained on, as its adapter_config.json says."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


AdapterLoader = Callable[[], LoadedAdapter]


def peft_dir_loader(directory: Path) -> AdapterLoader:
    """A loader that reads a PEFT directory (adapter_config.json + adapter_model.safetensors)."""

    def load() -> LoadedAdapter:
        from r3mes.model.peft_io import load_peft_adapter

        state, config, base_name = load_peft_adapter(directory)
        return LoadedAdapter(state=state, config=config, base_model_name=base_name)

    return load


@dataclass(frozen=True)
class AdapterEntry:
    """A registered adapter: its public name, serial and where to load it from."""

    name: str
    serial: int
    loader: AdapterLoader
    origin: str
    """Human-readable source (a path, or the loader's description)."""

    @property
    def model_key(self) -> str:
        """The name this version carries inside the model's LoRA dicts."""
        return f"serve{self.serial}"


def check_adapter_name(name: str) -> str:
    """Return `name` if it is a valid public adapter name, else raise InvalidRequest."""
    if not ADAPTER_NAME.match(name):
        raise InvalidRequest(
            f"adapter name {name!r} is invalid: use 1-64 letters, digits, '_', '-', '.', ':'",
            param="lora_name",
        )
    return name


class AdapterCache:
    """Registered adapter sources plus an LRU host-memory cache of their weights.

    Thread-safe: the API thread registers adapters while the engine thread reads them.
    """

    def __init__(
        self, *, max_cpu_loras: int, check: Callable[[LoadedAdapter], None] | None = None
    ) -> None:
        """`check` (e.g. "fits this model") runs on every registration; it raises ServeError."""
        if max_cpu_loras < 1:
            raise InvalidRequest("max_cpu_loras must be at least 1", param="max_cpu_loras")
        self.max_cpu_loras = max_cpu_loras
        self.check = check
        self._lock = threading.Lock()
        self._entries: dict[str, AdapterEntry] = {}
        self._loaded: OrderedDict[int, LoadedAdapter] = OrderedDict()
        # unique within this cache, which is all that needs them: one engine per model
        self._serials = itertools.count(1)
        self.hits = 0
        self.misses = 0

    def register(self, name: str, *, loader: AdapterLoader, origin: str) -> AdapterEntry:
        """Load an adapter once to check it, then publish it under `name` (replacing any)."""
        check_adapter_name(name)
        loaded = _call_loader(name, loader)
        if self.check is not None:
            try:
                self.check(loaded)
            except ServeError as exc:
                raise AdapterLoadError(name, str(exc)) from exc
        with self._lock:
            entry = AdapterEntry(
                name=name, serial=next(self._serials), loader=loader, origin=origin
            )
            old = self._entries.get(name)
            self._entries[name] = entry
            if old is not None:
                self._loaded.pop(old.serial, None)
            self._insert(entry.serial, loaded)
        log.info("adapter registered name=%s serial=%d origin=%s", name, entry.serial, origin)
        return entry

    def register_dir(self, name: str, directory: Path) -> AdapterEntry:
        """Register the PEFT adapter in `directory` under `name`."""
        if not directory.is_dir():
            raise AdapterLoadError(name, f"{directory} is not a directory")
        return self.register(name, loader=peft_dir_loader(directory), origin=str(directory))

    def unregister(self, name: str) -> AdapterEntry:
        """Forget `name`; requests already decoding with it finish normally."""
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is None:
                raise AdapterNotFound(name, list(self._entries))
            self._loaded.pop(entry.serial, None)
        log.info("adapter unregistered name=%s serial=%d", name, entry.serial)
        return entry

    def entry(self, name: str) -> AdapterEntry:
        """The current registration of `name`."""
        with self._lock:
            found = self._entries.get(name)
            if found is None:
                raise AdapterNotFound(name, list(self._entries))
            return found

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def weights(self, entry: AdapterEntry) -> LoadedAdapter:
        """The weights of `entry`, from the cache (hit) or its source (miss)."""
        with self._lock:
            cached = self._loaded.get(entry.serial)
            if cached is not None:
                self._loaded.move_to_end(entry.serial)
                self.hits += 1
                return cached
            self.misses += 1
        loaded = _call_loader(entry.name, entry.loader)
        with self._lock:
            self._insert(entry.serial, loaded)
        return loaded

    def cached_count(self) -> int:
        with self._lock:
            return len(self._loaded)

    def cached_nbytes(self) -> int:
        """Bytes of the adapter weights held in the host cache."""
        with self._lock:
            return sum(loaded.nbytes for loaded in self._loaded.values())

    def _insert(self, serial: int, loaded: LoadedAdapter) -> None:
        self._loaded[serial] = loaded
        self._loaded.move_to_end(serial)
        while len(self._loaded) > self.max_cpu_loras:
            evicted, _ = self._loaded.popitem(last=False)
            log.debug("adapter weights evicted from host cache serial=%d", evicted)


def _call_loader(name: str, loader: AdapterLoader) -> LoadedAdapter:
    try:
        loaded = loader()
    except AdapterLoadError:
        raise
    except (R3mesError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise AdapterLoadError(name, str(exc)) from exc
    if not isinstance(loaded, LoadedAdapter):
        raise AdapterLoadError(name, f"loader returned {type(loaded).__name__}, not LoadedAdapter")
    if not loaded.state:
        raise AdapterLoadError(name, "the adapter holds no tensors")
    return loaded
