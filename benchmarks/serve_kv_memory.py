"""Serving KV-cache memory: peak cache bytes against the live tokens' K/V bytes.

Run: .venv/bin/python -m benchmarks.serve_kv_memory [--quick]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.

The engine serves the shipped base model with its default limits (batch 16, 1 GiB budget).
`value` is the most bytes the batch's KV buffers held at once (reallocation overlap
included); `baseline` is the most bytes the real (unpadded) tokens' keys and values
needed at once, in the same run; goal: ratio <= 2. Two loads:
* burst: 16 completions submitted together, prompts of 6-40 tokens, same max_tokens
  (the load of issue 19, where the old cache reached (16, 262144) columns);
* stream: 64 completions arriving over time with prompts of 4-60 tokens and max_tokens
  of 8-192, so sequences of very different ages share the left-padded batch.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from typing import Any

from r3mes.model.shipped import SHIPPED_MODEL_NAME, load_shipped_model
from r3mes.serve.engine import EngineConfig, ServingEngine
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest

GOAL = "<= 2"


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit, **extra}))  # noqa: T201


def run_load(jobs: list[tuple[float, int, int]], seed: int) -> tuple[int, int]:
    """Serve (delay_s, prompt_tokens, max_tokens) jobs on a fresh engine; return
    (peak cache bytes, peak live K/V bytes)."""
    model, tokenizer = load_shipped_model()
    engine = ServingEngine(model, tokenizer, model_name=SHIPPED_MODEL_NAME, config=EngineConfig())
    vocab = model.config.vocab_size
    rng = random.Random(seed)
    left = threading.Semaphore(0)

    def sink(event: EngineEvent) -> None:
        if isinstance(event, FinishEvent):
            left.release()

    with engine:
        start = time.monotonic()
        for delay, prompt, max_tokens in jobs:
            time.sleep(max(0.0, start + delay - time.monotonic()))
            ids = tuple(rng.randrange(3, vocab) for _ in range(prompt))
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
            engine.submit(GenerationRequest(prompt_ids=ids, adapter=None, params=params), sink)
        for _ in jobs:
            left.acquire()
        kv = engine._scheduler.kv
        return kv.peak_nbytes, kv.peak_live_nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter completions (< 1 min)")
    args = parser.parse_args()
    rng = random.Random(0)
    burst_tokens = 32 if args.quick else 192
    burst = [(0.0, rng.randint(6, 40), burst_tokens) for _ in range(16)]
    n, top, gap = (32, 64, 0.03) if args.quick else (64, 192, 0.05)
    stream = [(i * gap, rng.randint(4, 60), rng.randint(8, top)) for i in range(n)]
    for name, jobs in (("burst", burst), ("stream", stream)):
        peak, live = run_load(jobs, seed=1)
        emit(
            f"peak KV-cache bytes vs peak live tokens' K/V bytes, {name} load "
            f"({len(jobs)} requests, shipped model, batch 16)",
            peak,
            "bytes",
            baseline=live,
            ratio=round(peak / live, 3),
            goal=GOAL,
        )


if __name__ == "__main__":
    main()
