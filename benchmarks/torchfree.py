"""Decoding without torch (`r3mes.model.torchfree`) at real size: tokens/s and peak RSS.

Run: .venv/bin/python -m benchmarks.torchfree [--quick] [--model DIR] [--threads N]

This process never imports torch: what it measures is a decode's whole footprint (python,
numpy, the native kernels, the mapped checkpoint, the KV buffer).  Without --model a
random-ternary checkpoint of the bitnet-2b4t shape (--quick: bitnet-quick) is written from
seed 0 by a child process (`write_random_checkpoint` uses torch).  The baselines come from a
second child in the same run, which imports torch: the copy bandwidth and the torch path's
decode (`load_pretrained(embedding_dtype="bfloat16")`, the same prompt, tokens and threads).

Figures (one JSON line each):
* torchfree_decode_tokens_per_s_batch1: greedy decode, batch 1, best of 3, against the floor
  = copy bandwidth / bytes a token reads (packed projections + scales, the bfloat16 head,
  the norms, one embedding row).  Goal >= 0.30.
* torchfree_decode_peak_rss: the process's RSS high-water mark over everything it did (start,
  load, decode; never reset), against the issue's budget: packed weights + embedding as held
  + KV cache + 300 MB.  Goal <= 1.
* torchfree_vs_torch_decode: its tokens/s against the torch path's.  Goal >= 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import cpu_description, emit, peak_rss, rss
from r3mes.errors import R3mesError
from r3mes.model.decoding import GenerationConfig
from r3mes.model.kernels import library
from r3mes.model.torchfree import TorchFreeModel, generate_ids, kv_bytes_per_token

RSS_SLACK = 300 * 2**20  # the allowance for everything but weights and KV
PROMPT = 8
CHILD_TIMEOUT_S = 1800


def decode_rate(model: TorchFreeModel, prompt: int, new_tokens: int) -> float:
    """Batch-1 greedy decode tokens/s (the prefill and first token excluded)."""
    steps = generate_ids(model, list(range(1, prompt + 1)), GenerationConfig(new_tokens))
    next(steps)
    start = time.perf_counter()
    count = sum(1 for _ in steps)
    return count / (time.perf_counter() - start)


def token_bytes(model: TorchFreeModel) -> dict[str, int]:
    """Bytes one decode step reads, by part, as the model holds them."""
    layers = model.layers
    return {
        "ternary_projections": sum(
            p.packed.nbytes + p.scale.nbytes for layer in layers for p in layer.projections()
        ),
        "lm_head": model.head.nbytes,
        "embedding_row": model.embedding.shape[1] * model.embedding.itemsize,
        "norms": sum(n.nbytes for layer in layers for n in layer.norms()) + model.final_norm.nbytes,
    }


def _child(code: str, timeout: int = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; its last stdout line is a JSON object."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def write_checkpoint(shape: str, folder: Path) -> None:
    _child(
        "import json; from pathlib import Path\n"
        "from r3mes.model.synthetic import preset, write_random_checkpoint\n"
        f"write_random_checkpoint(preset({shape!r}), Path({str(folder)!r}), seed=0)\n"
        "print(json.dumps({}))"
    )


def torch_baseline(folder: Path, threads: int, new_tokens: int, runs: int) -> dict[str, Any]:
    """Copy bandwidth and the torch path's decode tokens/s, from a child that imports torch."""
    return _child(
        "import json, torch; from pathlib import Path\n"
        "from benchmarks.decode import copy_bandwidth\n"
        "from benchmarks.ternary import decode_rate\n"
        "from r3mes.model.checkpoint import load_pretrained\n"
        f"torch.set_num_threads({threads})\n"
        f"m = load_pretrained(Path({str(folder)!r}), embedding_dtype='bfloat16')\n"
        f"decode_rate(m, {PROMPT}, 4)\n"
        f"rate = max(decode_rate(m, {PROMPT}, {new_tokens}) for _ in range({runs}))\n"
        "bw = copy_bandwidth(repeats=10)\n"
        "print(json.dumps({'tokens_per_s': rate, 'bandwidth': bw}))"
    )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the bitnet-quick shape, short runs")
    parser.add_argument("--model", type=Path, default=None, help="packed checkpoint folder")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every core)")
    args = parser.parse_args()
    if args.threads < 0:
        parser.error(f"--threads must be 0 (every core) or more, got {args.threads}")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a checkpoint folder (no config.json)")
    return args


def measure(folder: Path, threads: int, quick: bool) -> dict[str, Any]:
    """Load `folder` and decode in this process, which must not have imported torch: tokens/s
    (best of 3, or 2 with `quick`), the process's peak RSS, bytes held, KV and read per token."""
    if "torch" in sys.modules:
        raise SystemExit("benchmarks.torchfree.measure must run in a process without torch")
    runs, new_tokens = (2, 16) if quick else (3, 32)
    start = rss()
    model = TorchFreeModel.load(folder, threads=threads or None)
    decode_rate(model, PROMPT, 4)  # warm-up
    ours = max(decode_rate(model, PROMPT, new_tokens) for _ in range(runs))
    peak = peak_rss()
    if "torch" in sys.modules:
        raise SystemExit("the torch-free decode imported torch")
    return {
        "tokens_per_s": ours, "peak_rss": peak, "start_rss": start,
        "held": model.held_bytes(), "kv": kv_bytes_per_token(model.config) * (PROMPT + new_tokens),
        "bytes_per_token": token_bytes(model), "threads": model.threads, "runs": runs,
        "new_tokens": new_tokens,
        "shape": f"h{model.config.hidden_size}xL{model.config.num_hidden_layers}",
    }  # fmt: skip


def measure_in_child(folder: Path, threads: int, quick: bool) -> dict[str, Any]:
    """`measure` in a fresh interpreter (for a caller that has imported torch)."""
    return _child(
        "import json; from pathlib import Path\n"
        "from benchmarks.torchfree import measure\n"
        f"print(json.dumps(measure(Path({str(folder)!r}), {threads}, {quick})))"
    )


def budget_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The RSS line's numbers: peak against packed + embedding as held + KV + 300 MB."""
    budget = result["held"] + result["kv"] + RSS_SLACK
    return {
        "value": round(result["peak_rss"] / 2**20), "baseline": round(budget / 2**20),
        "ratio": round(result["peak_rss"] / budget, 3),
        "goal": "<= 1.0 (packed + embedding as held + KV + 300 MB)",
        "held_mib": round(result["held"] / 2**20), "kv_mib": round(result["kv"] / 2**20, 1),
        "start_rss_mib": round(result["start_rss"] / 2**20),
    }  # fmt: skip


def main() -> None:
    args = _parse_args()
    with tempfile.TemporaryDirectory(prefix="r3mes-torchfree-") as tmp:
        folder = args.model
        if folder is None:
            folder = Path(tmp) / "m"
            write_checkpoint("bitnet-quick" if args.quick else "bitnet-2b4t", folder)
        try:
            result = measure(folder, args.threads, args.quick)
        except R3mesError as exc:
            raise SystemExit(f"--model: {exc}") from exc
        context = {**cpu_description(), "isa": library.current_isa(),
                   "threads": result["threads"], "embedding": "bfloat16",
                   "runtime": "torch-free (numpy + native kernels)",
                   "shape": result["shape"]}  # fmt: skip
        base = torch_baseline(folder, result["threads"], result["new_tokens"], result["runs"])
    ours, parts = result["tokens_per_s"], result["bytes_per_token"]
    floor = base["bandwidth"] / sum(parts.values())
    emit(context, "torchfree_decode_tokens_per_s_batch1", round(ours, 2), "tokens/s",
         baseline=round(floor, 2), ratio=round(ours / floor, 3), goal=">= 0.30",
         copy_bandwidth_gb_s=round(base["bandwidth"] / 1e9, 2), bytes_per_token=parts)  # fmt: skip
    rss_line = budget_figures(result)
    emit(context, "torchfree_decode_peak_rss", rss_line.pop("value"), "MiB", **rss_line)
    emit(context, "torchfree_vs_torch_decode", round(ours, 2), "tokens/s",
         baseline=round(base["tokens_per_s"], 2), ratio=round(ours / base["tokens_per_s"], 3),
         goal=">= 1.0 (baseline: the torch path, bfloat16 head, same threads)")  # fmt: skip


if __name__ == "__main__":
    main()
