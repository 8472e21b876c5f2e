"""Serving KV-cache memory: peak cache bytes against the live tokens' K/V bytes; decode speed.

Run: .venv/bin/python -m benchmarks.serve_kv_memory [--quick]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.

The engine serves the shipped base model with its default limits (batch 16, 1 GiB budget,
paged KV cache). `value` is the most bytes the paged cache's pool held at once (every
block allocated, used or free, and the reallocation overlap); `baseline` is the most bytes
the real tokens' keys and values needed at once, in the same run; goal: ratio <= 2.
`dense_ratio` is the same load on the left-padded dense cache (`kv_layout="dense"`, the
layout before the paged cache), also measured in this run. Two loads:
* burst: 16 completions submitted together, prompts of 6-40 tokens, same max_tokens
  (the load of issue 19, where the old cache reached (16, 262144) columns);
* stream: 64 completions arriving over time with prompts of 4-60 tokens and max_tokens
  of 8-192, so sequences of very different ages share the batch.
A third figure: decode tokens per CPU second at batch 16 (16 prefilled sequences of 6-40
tokens, one forward per step, 3 interleaved runs each, best kept), paged against dense;
goal >= 0.8 (wall-clock rates ride along). Everything runs on one torch thread: on the
shared 2-core box CPU time is what is stable, and two threads under load spin.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from typing import Any, Literal

import torch

from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.shipped import SHIPPED_MODEL_NAME, load_shipped_model
from r3mes.serve.engine import EngineConfig, ServingEngine
from r3mes.serve.kv import BatchKV, SequenceKV
from r3mes.serve.paged_kv import PagedKV
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest

GOAL = "<= 2"
Layout = Literal["paged", "dense"]


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit, **extra}))  # noqa: T201


def run_load(jobs: list[tuple[float, int, int]], seed: int, layout: Layout) -> tuple[int, int]:
    """Serve (delay_s, prompt_tokens, max_tokens) jobs on a fresh engine; return
    (peak cache bytes, peak live K/V bytes)."""
    model, tokenizer = load_shipped_model()
    config = EngineConfig(kv_layout=layout)
    engine = ServingEngine(model, tokenizer, model_name=SHIPPED_MODEL_NAME, config=config)
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


@torch.inference_mode()
def decode_seconds(
    model: BitNetForCausalLM, prompts: list[list[int]], steps: int, layout: Layout
) -> tuple[float, float]:
    """CPU seconds (this thread) and wall seconds of `steps` greedy decode steps of the
    prefilled `prompts` together."""
    cfg = model.config
    layers, heads, dim = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    rows, length = len(prompts), cfg.max_position_embeddings
    cache: PagedKV | BatchKV
    if layout == "paged":
        cache = PagedKV(layers, n_kv_heads=heads, head_dim=dim, max_rows=rows, max_length=length)
    else:
        cache = BatchKV(layers, n_kv_heads=heads, head_dim=dim, max_rows=rows, max_length=length)
    tokens = []
    for prompt in prompts:
        seq = SequenceKV(cfg.num_hidden_layers)
        tokens.append(int(model(torch.tensor([prompt]), kv_cache=seq)[0, -1].argmax()))
        cache.add(seq)
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(steps):
        mask = cache.attention_mask()
        logits = model(
            torch.tensor([[t] for t in tokens]),
            attention_mask=mask,
            position_ids=cache.position_ids(),
            kv_cache=cache,
        )[:, -1]
        cache.advance()
        tokens = [int(t) for t in logits.argmax(-1)]
    return time.thread_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter completions (< 1 min)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the box is shared: CPU time per token, not thread contention
    rng = random.Random(0)
    burst_tokens = 32 if args.quick else 192
    burst = [(0.0, rng.randint(6, 40), burst_tokens) for _ in range(16)]
    n, top, gap = (32, 64, 0.03) if args.quick else (64, 192, 0.05)
    stream = [(i * gap, rng.randint(4, 60), rng.randint(8, top)) for i in range(n)]
    for name, jobs in (("burst", burst), ("stream", stream)):
        peak, live = run_load(jobs, seed=1, layout="paged")
        dense_peak, dense_live = run_load(jobs, seed=1, layout="dense")
        emit(
            f"peak KV-cache bytes vs peak live tokens' K/V bytes, {name} load "
            f"({len(jobs)} requests, shipped model, batch 16, paged cache)",
            peak,
            "bytes",
            baseline=live,
            ratio=round(peak / live, 3),
            goal=GOAL,
            dense_ratio=round(dense_peak / dense_live, 3),
        )
    model, _ = load_shipped_model()
    vocab = model.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(6, 40))] for _ in range(16)]
    steps = 64 if args.quick else 192
    cpu: dict[Layout, float] = {"paged": float("inf"), "dense": float("inf")}
    wall = dict(cpu)
    for _ in range(3):
        for layout in ("dense", "paged"):
            spent, took = decode_seconds(model, prompts, steps, layout)
            cpu[layout], wall[layout] = min(cpu[layout], spent), min(wall[layout], took)
    rate = {layout: 16 * steps / seconds for layout, seconds in cpu.items()}
    emit(
        f"decode tokens per CPU second at batch 16, paged vs dense KV cache ({steps} steps, "
        "shipped model, 1 torch thread, best of 3 interleaved)",
        rate["paged"],
        "tokens/s",
        baseline=round(rate["dense"], 1),
        ratio=round(rate["paged"] / rate["dense"], 3),
        goal=">= 0.8",
        wall_tokens_per_s={layout: round(16 * steps / s, 1) for layout, s in wall.items()},
    )


if __name__ == "__main__":
    main()
