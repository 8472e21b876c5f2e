"""BitLinear figures: frozen-packed BitLinear + LoRA vs nn.Linear fp32 + LoRA, and weight bytes.

Run: .venv/bin/python -m benchmarks.bitlinear [--quick]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from r3mes.model.bitlinear import BitLinear
from r3mes.model.lora import LoraConfig, LoraLinear


def _median_ms(step: Callable[[], None], repeats: int) -> float:
    step()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 1 minute)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens, width, rank = 512, 1024, 16
    repeats = 5 if args.quick else 20

    packed = BitLinear(width, width)
    packed.freeze()
    ours = LoraLinear(packed)
    ours.add_adapter("bench", LoraConfig(r=rank, alpha=2 * rank, target_modules=("q_proj",)))
    ours.active_adapter = "bench"
    dense = _DenseLora(nn.Linear(width, width, bias=False), rank, 2 * rank)
    x = torch.randn(tokens, width, requires_grad=True)

    def run(module: nn.Module) -> Callable[[], None]:
        def step() -> None:
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).square().mean().backward()

        return step

    ours_ms = _median_ms(run(ours), repeats)
    dense_ms = _median_ms(run(dense), repeats)
    print(
        json.dumps(
            {
                "figure": f"packed_bitlinear_lora_fwd_bwd_ms ({tokens}x{width}^2, r={rank})",
                "value": round(ours_ms, 3),
                "unit": "ms",
                "baseline": round(dense_ms, 3),
                "ratio": round(dense_ms / ours_ms, 3),
                "goal": ">= 0.5",
            }
        )
    )
    bytes_per_param = packed.weight_bytes() / (width * width)
    print(
        json.dumps(
            {
                "figure": "ternary_weight_bytes_per_param (packed, as held)",
                "value": round(bytes_per_param, 4),
                "unit": "bytes/param",
                "baseline": 4.0,
                "ratio": round(bytes_per_param / 4.0, 4),
                "goal": "value <= 0.26",
            }
        )
    )
    grads = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    print(
        json.dumps(
            {
                "figure": "trainable_params_frozen_packed_plus_lora",
                "value": grads,
                "unit": "params",
                "baseline": width * width + grads,
                "ratio": round(grads / (width * width + grads), 4),
                "goal": "<= 0.05",
            }
        )
    )


if __name__ == "__main__":
    main()
