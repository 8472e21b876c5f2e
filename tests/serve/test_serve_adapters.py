"""The host adapter cache: registration, LRU eviction, hits and misses, bad sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from r3mes.serve.adapters import AdapterCache, LoadedAdapter
from r3mes.serve.errors import AdapterLoadError, AdapterNotFound, InvalidRequest

AdapterFactory = Callable[[int], LoadedAdapter]


def counting_loader(adapter: LoadedAdapter, calls: list[int]) -> Callable[[], LoadedAdapter]:
    def load() -> LoadedAdapter:
        calls.append(1)
        return adapter

    return load


def test_lru_evicts_oldest_and_reloads_on_miss(adapter_factory: AdapterFactory) -> None:
    cache = AdapterCache(max_cpu_loras=2)
    calls: dict[str, list[int]] = {n: [] for n in "abc"}
    for i, name in enumerate("abc"):
        cache.register(name, loader=counting_loader(adapter_factory(i), calls[name]), origin=name)
    assert cache.cached_count() == 2
    assert [len(calls[n]) for n in "abc"] == [1, 1, 1]  # each loaded once to check it
    cache.weights(cache.entry("c"))
    assert (cache.hits, cache.misses) == (1, 0)
    cache.weights(cache.entry("a"))  # evicted earlier: loaded again
    assert (cache.hits, cache.misses) == (1, 1)
    assert len(calls["a"]) == 2
    assert cache.names() == ["a", "b", "c"]


def test_reregistering_gives_a_new_serial_and_weights(adapter_factory: AdapterFactory) -> None:
    cache = AdapterCache(max_cpu_loras=4)
    first = cache.register("x", loader=lambda: adapter_factory(1), origin="v1")
    second = cache.register("x", loader=lambda: adapter_factory(2), origin="v2")
    assert second.serial > first.serial and second.model_key != first.model_key
    assert cache.entry("x") == second
    w = cache.weights(second)
    key = next(iter(w.state))
    assert torch.equal(w.state[key], adapter_factory(2).state[key])
    other = AdapterCache(max_cpu_loras=4)  # serials belong to the cache, not the process
    assert other.register("x", loader=lambda: adapter_factory(1), origin="v1").serial == 1


def test_unknown_and_bad_adapters(adapter_factory: AdapterFactory) -> None:
    cache = AdapterCache(max_cpu_loras=1)
    with pytest.raises(AdapterNotFound, match="not loaded"):
        cache.entry("nope")
    with pytest.raises(InvalidRequest):
        cache.register("bad name/with slash", loader=lambda: adapter_factory(0), origin="")

    def broken() -> LoadedAdapter:
        raise OSError("disk on fire")

    with pytest.raises(AdapterLoadError, match="disk on fire"):
        cache.register("broken", loader=broken, origin="")
    with pytest.raises(AdapterLoadError, match="not a directory"):
        cache.register_dir("missing", Path("/nonexistent/adapter"))
    assert cache.names() == []
    with pytest.raises(AdapterNotFound):
        cache.unregister("broken")
