"""The engine: mixed-adapter batches, adapter slots, cancellation, stops, hot reload."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch

from r3mes.model.tokenizer import Tokenizer
from r3mes.serve.adapters import LoadedAdapter
from r3mes.serve.engine import ServingEngine
from r3mes.serve.errors import (
    AdapterLoadError,
    EngineClosed,
    EngineOverloaded,
    InvalidRequest,
    ModelNotFound,
)
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest, TokenEvent

EngineFactory = Callable[..., ServingEngine]


class Collector:
    """Gathers one request's events on the engine thread."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.text = ""
        self.finish: FinishEvent | None = None
        self.done = threading.Event()

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, TokenEvent):
            self.tokens.append(event.token_id)
            self.text += event.text
        else:
            self.finish = event
            self.text += event.text
            self.done.set()

    def wait(self, timeout: float = 30.0) -> Collector:
        assert self.done.wait(timeout), "request did not finish"
        return self


def submit(engine: ServingEngine, prompt: str, adapter: str | None, **params: object) -> Collector:
    sink = Collector()
    request = GenerationRequest(
        prompt_ids=engine.encode_prompt(prompt),
        adapter=adapter,
        params=SamplingParams(**params),  # type: ignore[arg-type]
    )
    engine.submit(request, sink)
    return sink


JOBS = [
    (None, "hello world"),
    ("ad0", "the quick brown fox jumps over"),
    ("ad1", "def add"),
    ("ad2", "write a python function that sorts a list of numbers"),
    ("ad0", "bonjour"),
]


def test_mixed_adapter_batch_equals_each_request_alone(engine: ServingEngine) -> None:
    alone = [submit(engine, p, a, max_tokens=24).wait().tokens for a, p in JOBS]
    together = [submit(engine, p, a, max_tokens=24) for a, p in JOBS]
    got = [c.wait().tokens for c in together]
    assert got == alone
    assert len({tuple(t) for t in alone}) == len({p for _, p in JOBS})  # adapters matter
    assert all(len(t) == 24 for t in got)


def test_adapters_change_the_output(engine: ServingEngine) -> None:
    outs = {
        name: submit(engine, "hello world", name, max_tokens=16).wait().tokens
        for name in (None, "ad0", "ad1", "ad2")
    }
    assert len({tuple(v) for v in outs.values()}) == 4


def test_at_most_max_loras_adapters_in_the_model(engine_factory: EngineFactory) -> None:
    engine = engine_factory(n_adapters=3, max_loras=1)
    reference = {a: submit(engine, "hello", a, max_tokens=12).wait().tokens for a in ("ad0", "ad1")}
    jobs = [(a, submit(engine, "hello", a, max_tokens=12)) for a in ("ad0", "ad1", "ad0", "ad1")]
    seen = 0
    while not all(c.done.is_set() for _, c in jobs):
        stats = engine.stats()
        assert stats.active_adapters <= 1 and stats.resident_adapters <= 1
        seen = max(seen, stats.running)
        time.sleep(0.001)
    for name, c in jobs:
        assert c.tokens == reference[name]


def test_seeded_sampling_is_reproducible_in_any_batch(engine: ServingEngine) -> None:
    kwargs = {"max_tokens": 20, "temperature": 1.0, "top_p": 0.9, "seed": 1234}
    alone = submit(engine, "hello world", "ad1", **kwargs).wait().tokens
    crowd = [submit(engine, p, a, max_tokens=20) for a, p in JOBS]
    again = submit(engine, "hello world", "ad1", **kwargs)
    assert again.wait().tokens == alone
    for c in crowd:
        c.wait()


def test_cancel_frees_the_slot(engine_factory: EngineFactory) -> None:
    engine = engine_factory(n_adapters=1, max_batch_size=1)
    sink = Collector()
    params = SamplingParams(max_tokens=400, ignore_eos=True)  # ends only by length or cancel
    request = GenerationRequest(
        prompt_ids=engine.encode_prompt("hello"), adapter="ad0", params=params
    )
    handle = engine.submit(request, sink)
    while not sink.tokens:
        time.sleep(0.001)
    waiting = submit(engine, "hello", None, max_tokens=3)
    time.sleep(0.05)
    assert not waiting.done.is_set()  # the only slot is taken
    handle.cancel()
    assert sink.wait().finish is not None and sink.finish.reason == "cancelled"  # type: ignore[union-attr]
    assert waiting.wait().finish.reason == "length"  # type: ignore[union-attr]
    assert engine.stats().running == 0


def test_stop_string_and_usage(engine: ServingEngine, tokenizer: Tokenizer) -> None:
    free = submit(engine, "hello world", "ad2", max_tokens=30).wait()
    assert free.finish is not None and free.finish.reason == "length"
    assert free.finish.completion_tokens == 30
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = submit(engine, "hello world", "ad2", max_tokens=30, stop=(stop,)).wait()
    assert cut.finish is not None and cut.finish.reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    assert cut.finish.prompt_tokens == len(engine.encode_prompt("hello world"))


def test_hot_reload_keeps_running_requests_on_their_version(
    engine: ServingEngine, adapter_factory: Callable[[int], LoadedAdapter]
) -> None:
    v1 = submit(engine, "hello world", "ad0", max_tokens=40).wait().tokens
    running = submit(engine, "hello world", "ad0", max_tokens=40)
    while not running.tokens:
        time.sleep(0.001)
    new = adapter_factory(999)
    engine.load_adapter_from("ad0", lambda: new, origin="v2")
    v2 = submit(engine, "hello world", "ad0", max_tokens=40).wait().tokens
    assert running.wait().tokens == v1
    assert v2 != v1
    deadline = time.monotonic() + 60
    while engine.stats().resident_adapters > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().resident_adapters == 1  # the old version left the model


def test_submit_rejects_bad_requests(engine: ServingEngine) -> None:
    with pytest.raises(ModelNotFound, match=r"tiny-base \(the base model\), ad0, ad1, ad2"):
        submit(engine, "hi", "missing")
    with pytest.raises(InvalidRequest, match="at most"):
        engine.submit(GenerationRequest(prompt_ids=(1,) * 600, adapter=None), Collector())
    with pytest.raises(InvalidRequest, match="token ids"):
        engine.submit(GenerationRequest(prompt_ids=(1, 99_999), adapter=None), Collector())
    with pytest.raises(InvalidRequest, match="empty"):
        engine.submit(GenerationRequest(prompt_ids=(), adapter=None), Collector())
    engine.stop()
    with pytest.raises(EngineClosed):
        submit(engine, "hi", None)


def test_unloaded_adapter_is_refused_but_running_ones_finish(engine: ServingEngine) -> None:
    running = submit(engine, "hello", "ad1", max_tokens=30)
    engine.unload_adapter("ad1")
    assert running.wait().finish is not None
    assert running.finish.reason == "length"  # type: ignore[union-attr]
    with pytest.raises(ModelNotFound):
        submit(engine, "hello", "ad1")


def test_adapters_that_do_not_fit_are_refused_at_load(
    engine: ServingEngine, adapter_factory: Callable[[int], LoadedAdapter]
) -> None:
    good = adapter_factory(1)
    key = next(k for k in good.state if "lora_A" in k)
    wrong = LoadedAdapter(
        state={**good.state, key: torch.zeros(4, 7)}, config=good.config, base_model_name="x"
    )
    with pytest.raises(AdapterLoadError, match="shape"):
        engine.load_adapter_from("wrong", lambda: wrong)
    assert "wrong" not in engine.adapters.names()
    for reserved in ("auto", engine.model_name):
        with pytest.raises(InvalidRequest, match="reserved"):
            engine.load_adapter_from(reserved, lambda: good)


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(
    engine: ServingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = engine._scheduler
    real = scheduler._decode_step
    calls = {"n": 0}

    def flaky() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated device fault")
        real()

    monkeypatch.setattr(scheduler, "_decode_step", flaky)
    failed = submit(engine, "hello", "ad0", max_tokens=10).wait()
    assert failed.finish is not None and failed.finish.reason == "error"
    assert "internal error" in (failed.finish.error or "")  # details only in the log
    ok = submit(engine, "hello", "ad0", max_tokens=10).wait()
    assert ok.finish is not None and ok.finish.reason == "length"
    assert engine.stats().running == 0 and engine.alive


def test_full_queue_is_refused(engine_factory: EngineFactory) -> None:
    engine = engine_factory(n_adapters=1, max_batch_size=1, max_waiting=1)
    first = submit(engine, "hello", None, max_tokens=300)
    while not first.tokens:
        time.sleep(0.001)
    second = submit(engine, "hello", None, max_tokens=2)
    with pytest.raises(EngineOverloaded, match="queue is full") as refused:
        submit(engine, "hello", None, max_tokens=2)
    assert refused.value.retry_after_s >= 1
    assert second.wait().finish is not None
    first.wait()


def test_a_failing_prefill_fails_only_its_requests(
    engine: ServingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = engine._scheduler
    real = scheduler._prefill
    calls = {"n": 0}

    def flaky(batch: list[object]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated prefill fault")
        real(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler, "_prefill", flaky)
    failed = submit(engine, "hello", None, max_tokens=5).wait()
    assert failed.finish is not None and failed.finish.reason == "error"
    later = submit(engine, "hello", None, max_tokens=5).wait()
    assert later.finish is not None and later.finish.reason == "length"


def test_prefill_runs_the_head_on_the_last_position_only(engine_factory: EngineFactory) -> None:
    """Session 5 (issue 16): the prefill computed logits for every prompt position and kept
    the last; at a 128k vocabulary that is 0.5 MB a prompt token (2 GB for four prompts of
    1,000 tokens). The head now sees one position per row, prefill and decode alike."""
    engine = engine_factory(n_adapters=1)
    shapes: list[tuple[int, ...]] = []
    hook = engine.model.lm_head.register_forward_hook(
        lambda _m, args, out: shapes.append(tuple(out.shape))
    )
    try:
        long_prompt = "the quick brown fox jumps over the lazy dog " * 6
        sinks = [
            submit(engine, long_prompt, None, max_tokens=3, ignore_eos=True),
            submit(engine, "hello world", "ad0", max_tokens=3, ignore_eos=True),
        ]
        for sink in sinks:
            assert sink.wait().finish is not None
            assert len(sink.tokens) == 3
    finally:
        hook.remove()
    assert len(engine.encode_prompt(long_prompt)) > 20
    assert shapes and all(s[1] == 1 for s in shapes), shapes  # (rows, 1, vocab)
    vocab = engine.model.config.vocab_size
    assert all(s[2] == vocab for s in shapes)
