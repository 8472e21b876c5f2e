"""Admission: short requests pass queued long ones, waits are bounded, the KV budget holds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from r3mes.serve.engine import ServingEngine
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest

EngineFactory = Callable[..., ServingEngine]


class Finish:
    """Records when and how one request finished (called on the engine thread)."""

    def __init__(self, log: list[str] | None = None, name: str = "") -> None:
        self.event: FinishEvent | None = None
        self.done = threading.Event()
        self._log = log
        self._name = name

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, FinishEvent):
            self.event = event
            if self._log is not None:
                self._log.append(self._name)
            self.done.set()

    def wait(self, timeout: float = 120.0) -> FinishEvent:
        assert self.done.wait(timeout), "request did not finish"
        assert self.event is not None
        return self.event


def send(engine: ServingEngine, sink: Finish, *, prompt: int, max_tokens: int) -> None:
    ids = tuple(range(5, 5 + prompt))
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    engine.submit(GenerationRequest(prompt_ids=ids, adapter=None, params=params), sink)


def test_a_short_request_passes_many_queued_long_streams(engine_factory: EngineFactory) -> None:
    engine = engine_factory(n_adapters=0, max_batch_size=2)
    order: list[str] = []
    longs = [Finish(order, f"long{i}") for i in range(12)]
    for sink in longs:
        send(engine, sink, prompt=8, max_tokens=150)
    short = Finish(order, "short")
    send(engine, short, prompt=8, max_tokens=3)  # needs a batch row, like the streams
    assert short.wait().reason == "length"
    # only the two streams already decoding may finish first; the other ten wait for it
    assert len(order) <= 3 and order[-1] == "short"
    for sink in longs:
        assert sink.wait().reason == "length"  # and the long streams are not starved


class Stalling(Finish):
    """Holds the engine thread at this request's first token until `release` is set."""

    def __init__(self, log: list[str] | None = None, name: str = "") -> None:
        super().__init__(log, name)
        self.stalled = threading.Event()
        self.release = threading.Event()

    def __call__(self, event: EngineEvent) -> None:
        if not self.stalled.is_set():
            self.stalled.set()
            assert self.release.wait(30)
        super().__call__(event)


def test_a_one_token_request_needs_no_batch_row(engine_factory: EngineFactory) -> None:
    """Issue 19 item 8: a 1-token request waited behind every stream (p50 93 s)."""
    engine = engine_factory(n_adapters=0, max_batch_size=1)
    order: list[str] = []
    running = Stalling(order, "long")
    send(engine, running, prompt=4, max_tokens=400)
    assert running.stalled.wait(30)  # the only batch row is taken
    queued = [Finish(order, f"queued{i}") for i in range(3)]
    for sink in queued:
        send(engine, sink, prompt=4, max_tokens=300)
    short = Finish(order, "short")
    send(engine, short, prompt=6, max_tokens=1)
    running.release.set()
    assert short.wait().reason == "length" and short.wait().completion_tokens == 1
    assert order == ["short"]  # answered while the batch row was still busy
    assert all(s.wait().reason == "length" for s in [running, *queued])


def test_a_request_waiting_too_long_is_refused_with_a_retry_hint(
    engine_factory: EngineFactory,
) -> None:
    engine = engine_factory(n_adapters=0, max_batch_size=1, max_queue_wait_s=0.3)
    running, queued = Stalling(), Finish()
    send(engine, running, prompt=4, max_tokens=100)
    assert running.stalled.wait(30)  # the only batch slot is taken, the engine is held
    send(engine, queued, prompt=4, max_tokens=4)
    time.sleep(0.4)  # past max_queue_wait_s
    running.release.set()
    refused = queued.wait(30)
    assert refused.reason == "rejected"
    assert refused.retry_after_s is not None and refused.retry_after_s >= 1
    assert "waited" in (refused.error or "")
    assert running.wait().reason == "length"  # the running stream is untouched


@pytest.mark.parametrize("layout", ["paged", "dense"])
def test_max_batch_at_max_length_stays_within_the_kv_budget(
    engine_factory: EngineFactory, layout: str
) -> None:
    """16 sequences of max_model_len tokens would need 2.1 MB of cache; the budget is 1 MiB,
    so the engine runs as many as fit, queues the rest, and never allocates past it."""
    engine = engine_factory(
        n_adapters=0, max_batch_size=16, max_model_len=512, kv_cache_mb=1, kv_layout=layout
    )
    kv = engine._scheduler.kv
    longest = (12, 499)  # 12 prompt tokens, then 499 decode steps: 511 positions
    assert kv.max_bytes == 2**20 and not kv.fits([longest] * 16)
    sinks = [Finish() for _ in range(16)]
    most_running = 0
    for sink in sinks:
        send(engine, sink, prompt=12, max_tokens=500)
    while not all(s.done.is_set() for s in sinks):
        most_running = max(most_running, engine.stats().running)
        time.sleep(0.01)
    assert all(s.wait().reason == "length" for s in sinks)
    assert all(s.wait().completion_tokens == 500 for s in sinks)
    assert kv.peak_nbytes <= kv.max_bytes
    assert 2 <= most_running < 16  # several ran together, never all: the rest queued
    deadline = time.monotonic() + 60  # the engine thread frees rows after the finish event
    while kv.nbytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kv.nbytes() == 0  # everything finished: the cache is empty
