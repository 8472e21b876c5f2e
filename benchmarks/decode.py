"""Decode throughput of the shipped model vs the memory-bandwidth floor, measured in one run.

Run: .venv/bin/python -m benchmarks.decode [--quick] [--model DIR] [--threads N]

The floor: every decode step must read all weights once (packed ternary bodies, the fp32 LM
head and embeddings row, norms); floor tokens/s = batch * copy bandwidth / weight bytes,
where the copy bandwidth is measured here with a large tensor copy (best of several). Two
modes: "packed" unpacks a transient ternary copy per forward (the default, memory held =
packed), "cached" keeps an unpacked float copy (`BitLinear.cache_unpacked`, faster, 16x the
memory).

Measurement: one untimed warm-up generation per setting, then the best of N timed runs
(N = 3 with --quick, 7 without) of 64 (--quick) or 128 decode steps each, so a burst of
load from other processes on a shared machine does not decide the figure.

Goal basis: the shipped model has 4M parameters, so a batch-1 decode step reads only ~5 MB
(~0.4 ms at ~14 GB/s) but runs ~700 top-level torch ops (counted with torch.profiler, 4 layers
plus unpacking and activation quantization), each a few microseconds of eager CPU dispatch:
>= ~3 ms per step, so even with free arithmetic the ratio cannot exceed ~0.1 here. The goal is
therefore a regression guard, about one third of the ratio measured on the reference machine
in docs/benchmarks.md (packed ~0.05 -> 0.02, cached ~0.3 -> 0.1): falling below it means
decode got ~3x slower against the machine's own bandwidth (a per-step re-quantization, a lost
KV cache), which noise on a shared machine does not do to a best-of-N figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from r3mes.errors import R3mesError
from r3mes.model.checkpoint import load_pretrained
from r3mes.model.generate import GenerationConfig, generate_token_ids
from r3mes.model.modeling import BitNetForCausalLM

GOALS = {"packed": ">= 0.02", "cached": ">= 0.1"}


def copy_bandwidth(nbytes: int = 256 * 1024 * 1024, repeats: int = 5) -> float:
    """Bytes per second moved (read + write) by a large tensor copy, best of `repeats`."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first touch of the pages
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def weight_bytes_per_step(model: BitNetForCausalLM) -> int:
    """Bytes of weights a decode step reads: BitLinear bodies as held, head, norms."""
    total = sum(m.weight_bytes() for _, m in model.bit_linears())
    total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    for name, param in model.named_parameters():
        if "norm" in name:
            total += param.numel() * 4
    return total


def decode_tokens_per_s(model: BitNetForCausalLM, batch: int, new_tokens: int) -> float:
    """Decode tokens/s of one generation (prefill and first token excluded)."""
    prompts = [[1, *range(10 + row, 26 + row)] for row in range(batch)]
    config = GenerationConfig(max_new_tokens=new_tokens)
    steps = generate_token_ids(model, prompts, config, pad_id=0)
    next(steps)  # prefill + first token, not decode
    start = time.perf_counter()
    count = sum(1 for _ in steps)
    return batch * count / (time.perf_counter() - start)


def best_rate(model: BitNetForCausalLM, batch: int, new_tokens: int, repeats: int) -> float:
    decode_tokens_per_s(model, batch, new_tokens)  # warm-up (allocator, caches, unpack)
    return max(decode_tokens_per_s(model, batch, new_tokens) for _ in range(repeats))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 1 minute)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (>= 1)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.model is None:
        from r3mes.model.shipped import shipped_model_dir

        args.model = shipped_model_dir()
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a checkpoint folder (no config.json)")
    try:
        args.net = load_pretrained(args.model)
    except R3mesError as exc:
        parser.error(f"--model: {exc}")
    return args


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    model: BitNetForCausalLM = args.net
    new_tokens, repeats = (64, 3) if args.quick else (128, 7)
    bandwidth = copy_bandwidth()
    for mode in ("packed", "cached"):
        for _, layer in model.bit_linears():
            layer.cache_unpacked(mode == "cached")
        for batch in (1, 8):
            rate = best_rate(model, batch, new_tokens, repeats)
            floor = batch * bandwidth / weight_bytes_per_step(model)
            print(
                json.dumps(
                    {
                        "figure": f"decode_tokens_per_s_batch{batch}_{mode}",
                        "value": round(rate, 1),
                        "unit": "tokens/s",
                        "baseline": round(floor, 1),
                        "ratio": round(rate / floor, 4),
                        "goal": GOALS[mode],
                    }
                )
            )
    print(
        json.dumps(
            {
                "figure": "copy_bandwidth",
                "value": round(bandwidth / 1e9, 2),
                "unit": "GB/s",
                "baseline": None,
                "ratio": None,
                "goal": "measured",
            }
        )
    )


if __name__ == "__main__":
    main()
