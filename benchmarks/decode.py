"""Decode throughput of the shipped model vs the memory-bandwidth floor, measured in one run.

Run: .venv/bin/python -m benchmarks.decode [--quick] [--model DIR]
The floor: every decode step must read all weights once (packed ternary bodies, the fp32 LM
head and embeddings row, norms); floor tokens/s = batch * copy bandwidth / weight bytes,
where the copy bandwidth is measured here with a large tensor copy. Two modes: "packed"
unpacks a transient ternary copy per forward (the default, memory held = packed), "cached"
keeps an unpacked float copy (`BitLinear.cache_unpacked`, faster, 16x the memory).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from r3mes.model.checkpoint import load_pretrained
from r3mes.model.generate import GenerationConfig, generate_token_ids
from r3mes.model.modeling import BitNetForCausalLM


def copy_bandwidth(nbytes: int = 256 * 1024 * 1024, repeats: int = 5) -> float:
    """Bytes per second moved (read + write) by a large tensor copy, best of `repeats`."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def weight_bytes_per_step(model: BitNetForCausalLM) -> int:
    """Bytes of weights a decode step reads: BitLinear bodies as held, head, norms."""
    total = sum(m.weight_bytes() for _, m in model.bit_linears())
    total += model.lm_head.weight.numel() * 4
    for name, param in model.named_parameters():
        if "norm" in name:
            total += param.numel() * 4
    return total


def decode_tokens_per_s(model: BitNetForCausalLM, batch: int, new_tokens: int) -> float:
    prompts = [[1, *range(10 + row, 26 + row)] for row in range(batch)]
    config = GenerationConfig(max_new_tokens=new_tokens)
    steps = generate_token_ids(model, prompts, config, pad_id=0)
    next(steps)  # prefill + first token, not decode
    start = time.perf_counter()
    count = sum(1 for _ in steps)
    return batch * count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer tokens (< 1 minute)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from r3mes.model.shipped import shipped_model_dir

        args.model = shipped_model_dir()
    model = load_pretrained(args.model)
    new_tokens = 32 if args.quick else 128
    bandwidth = copy_bandwidth()
    for mode in ("packed", "cached"):
        for _, layer in model.bit_linears():
            layer.cache_unpacked(mode == "cached")
        for batch in (1, 8):
            rate = decode_tokens_per_s(model, batch, new_tokens)
            floor = batch * bandwidth / weight_bytes_per_step(model)
            print(
                json.dumps(
                    {
                        "figure": f"decode_tokens_per_s_batch{batch}_{mode}",
                        "value": round(rate, 1),
                        "unit": "tokens/s",
                        "baseline": round(floor, 1),
                        "ratio": round(rate / floor, 4),
                        "goal": ">= 0.02",
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
