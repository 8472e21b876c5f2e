"""BitLinear figures: frozen-packed BitLinear + LoRA vs nn.Linear fp32 + LoRA, and weight bytes.

Run: .venv/bin/python -m benchmarks.bitlinear [--quick] [--threads N]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"};
ratio = value / baseline, both measured in this run. Times are the best of N forward+backward
steps, ours and the baseline timed alternately (N = 7 with --quick, 25 without).

Goal bases:
* time (ours / fp32 dense, goal <= 2.0): the packed layer does the same matmuls as the dense
  one plus, per forward, an unpack of the 2-bit weights into a transient ternary copy and an
  8-bit fake-quantization of the activations - elementwise passes over the weight and the
  input that cost a fraction of the (tokens x width^2) matmul at this shape. Paying for the
  16x smaller weights with at most twice the time is the trade the frozen mode offers.
* bytes per parameter (ours / fp32 nn.Linear, goal <= 0.065): 2 bits = 0.25 bytes against 4
  bytes is 0.0625, plus the one fp32 scale; 0.065 (1/15.4) is the issue's "at most 0.26
  bytes, at least 15x smaller than fp32" stated against the fp32 layer measured here.
* trainable parameters (LoRA / full fine-tuning of the same layer, goal <= 0.05).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import nn

from r3mes.model.bitlinear import BitLinear
from r3mes.model.lora import LoraConfig, LoraLinear


def _best_ms_pair(
    first: Callable[[], None], second: Callable[[], None], repeats: int
) -> tuple[float, float]:
    """Best ms of each step, timed alternately: load from other processes hits both alike,
    and the fastest run is the one it disturbed least."""
    first()  # warm up
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for step, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            step()
            out.append((time.perf_counter() - start) * 1000)
    return min(times[0]), min(times[1])


def _tensor_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer `module` holds."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class _DenseLora(nn.Module):
    """The baseline: a frozen fp32 nn.Linear plus the same LoRA maths."""

    def __init__(self, base: nn.Linear, rank: int, alpha: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.01)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling
        return out


def _line(figure: str, value: float, unit: str, baseline: float, goal: str) -> str:
    return json.dumps(
        {
            "figure": figure,
            "value": round(value, 4),
            "unit": unit,
            "baseline": round(baseline, 4),
            "ratio": round(value / baseline, 4),
            "goal": goal,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 1 minute)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (>= 1)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens, width, rank = 512, 1024, 16
    repeats = 7 if args.quick else 25

    packed = BitLinear(width, width)
    packed.freeze()
    ours = LoraLinear(packed)
    ours.add_adapter("bench", LoraConfig(r=rank, alpha=2 * rank, target_modules=("q_proj",)))
    ours.active_adapter = "bench"
    dense_linear = nn.Linear(width, width, bias=False)
    dense = _DenseLora(dense_linear, rank, 2 * rank)
    x = torch.randn(tokens, width, requires_grad=True)

    def run(module: nn.Module) -> Callable[[], None]:
        def step() -> None:
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).square().mean().backward()

        return step

    ours_ms, dense_ms = _best_ms_pair(run(ours), run(dense), repeats)
    print(
        _line(
            f"packed_bitlinear_lora_fwd_bwd_ms ({tokens}x{width}^2, r={rank}) vs fp32 dense",
            ours_ms,
            "ms",
            dense_ms,
            "<= 2.0",
        )
    )
    params = width * width
    print(
        _line(
            "weight_bytes_per_param (packed 2-bit + scale, as held) vs fp32 nn.Linear",
            packed.weight_bytes() / params,
            "bytes/param",
            _tensor_bytes(dense_linear) / params,
            "<= 0.065",
        )
    )
    trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    print(
        _line(
            "trainable_params_frozen_packed_plus_lora vs full fine-tuning (+ LoRA)",
            trainable,
            "params",
            sum(p.numel() for p in dense.parameters()),
            "<= 0.05",
        )
    )


if __name__ == "__main__":
    main()
