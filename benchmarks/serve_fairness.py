"""Serving fairness: how long a short request takes while many long streams are queued.

Run: .venv/bin/python -m benchmarks.serve_fairness [--quick]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.

The shipped model, batch 16. N long streams (ignore_eos, fixed max_tokens) are submitted
at once; one second later, 10 short requests arrive 0.2 s apart. `value` is their median
latency (submit to finish) with the default admission order (a request of n tokens ranks
n * 0.1 s later than its arrival); `baseline` is the same load in arrival order
(size_priority_s_per_token = 0), measured in the same run. Goal: value <= 1000 ms.
Two sizes of short request: 1 token (finishes at its prefill, so it needs no batch row in
either order) and 4 tokens (needs a row: only the admission order helps it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from typing import Any

from r3mes.model.shipped import SHIPPED_MODEL_NAME, load_shipped_model
from r3mes.serve.engine import EngineConfig, ServingEngine
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit, **extra}))  # noqa: T201


def short_latencies_ms(
    *, streams: int, stream_tokens: int, short_tokens: int, fifo: bool
) -> list[float]:
    model, tokenizer = load_shipped_model()
    config = EngineConfig(
        max_waiting=streams + 16,
        max_queue_wait_s=3600.0,
        size_priority_s_per_token=0.0 if fifo else EngineConfig().size_priority_s_per_token,
    )
    engine = ServingEngine(model, tokenizer, model_name=SHIPPED_MODEL_NAME, config=config)
    rng = random.Random(0)
    vocab = model.config.vocab_size
    finished = threading.Semaphore(0)
    latencies: list[float] = []

    def request(max_tokens: int) -> GenerationRequest:
        ids = tuple(rng.randrange(3, vocab) for _ in range(12))
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        return GenerationRequest(prompt_ids=ids, adapter=None, params=params)

    def stream_sink(event: EngineEvent) -> None:
        if isinstance(event, FinishEvent):
            finished.release()

    def short_sink(started: float) -> Any:
        def sink(event: EngineEvent) -> None:
            if isinstance(event, FinishEvent):
                latencies.append((time.monotonic() - started) * 1000)
                finished.release()

        return sink

    with engine:
        for _ in range(streams):
            engine.submit(request(stream_tokens), stream_sink)
        time.sleep(1.0)
        for _ in range(10):
            engine.submit(request(short_tokens), short_sink(time.monotonic()))
            time.sleep(0.2)
        for _ in range(streams + 10):
            finished.acquire()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter streams (< 1 min)")
    args = parser.parse_args()
    streams, tokens = (100, 64) if args.quick else (200, 128)
    for short in (1, 4):
        load = {"streams": streams, "stream_tokens": tokens, "short_tokens": short}
        fair = statistics.median(short_latencies_ms(**load, fifo=False))
        fifo = statistics.median(short_latencies_ms(**load, fifo=True))
        emit(
            f"{short}-token request latency p50 with {streams} streams of {tokens} tokens "
            "queued (shipped model, batch 16) vs arrival order",
            fair,
            "ms",
            baseline=round(fifo, 1),
            ratio=round(fair / fifo, 4),
            goal="<= 1000",
        )


if __name__ == "__main__":
    main()
