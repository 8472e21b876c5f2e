"""Whole-model decode: r3mes against llama.cpp (TQ2_0) on the same checkpoint and threads.

Run: .venv/bin/python -m benchmarks.llamacpp_e2e [--quick] [--model DIR] [--threads N]
     [--repeats R] [--new-tokens N] [--embedding auto|f32|f16|bf16]

Needs `pip install -e '.[llamacpp]'` (llama-cpp-python builds llama.cpp from source, about an
hour on two busy cores; gguf is llama.cpp's file-format package).

The checkpoint (`--model`, else a random one of the bitnet-quick shape with `--quick` or the
2B-4T shape) is written as a GGUF file by `r3mes.model.gguf_export` (llama.cpp's `bitnet`
architecture, projections as TQ2_0, the embedding as the checkpoint stores it unless
`--embedding` says otherwise) and loaded with `llama_cpp.Llama`.  Both sides then run batch-1
greedy decoding with a KV cache from the same prompt token ids (fed directly, no text):

* r3mes: `generate_token_ids` (the decode loop `r3mes model generate` and serving run), its
  first step (prefill of the prompt plus the first token) timed apart from the rest;
* llama.cpp: `Llama.eval(prompt)` timed as the prefill, then `Llama.eval([token])` with the
  argmax of `llama_get_logits_ith(ctx, -1)` per step.

Decode tokens/s counts the steps after the first token; the best of interleaved repeats (r3mes,
then llama.cpp) is reported, with the median time of a step over every repeat (on a loaded
machine the best whole run is one lucky window; the median step is steadier), prefill times,
the bytes each side holds for the weights and the load average before and after.

Before timing, the next-token logits after the prompt are compared.  llama.cpp's `bitnet` graph
applies SiLU to the FFN gate where r3mes (and 2B-4T) apply squared ReLU, so two comparisons:
against r3mes as it is (the models differ there), and against r3mes with its FFN activation
switched to SiLU for the check only (everything else the same: this checks the conversion; the
rest of the gap is activation quantization per token against ggml's per 256-block Q8_K, the
fp16 KV cache and, with a bf16 embedding, bf16 head products).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.machine import cpu_description
from benchmarks.ternary import held_bytes
from r3mes.errors import R3mesError
from r3mes.model.checkpoint import load_pretrained
from r3mes.model.generate import GenerationConfig, generate_token_ids
from r3mes.model.gguf_export import EMBEDDING_TYPES, GgufExport, export_gguf
from r3mes.model.kernels import ternary as kernels
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.synthetic import preset, write_random_checkpoint

PROMPT_TOKENS = 16


def _llama_cpp() -> Any:
    try:
        return importlib.import_module("llama_cpp")  # optional, not in the test extras
    except ImportError as exc:
        raise SystemExit(
            "llama-cpp-python is not installed: `.venv/bin/pip install -e '.[llamacpp]'` "
            f"(builds llama.cpp from source) ({exc})"
        ) from exc


class LlamaDecoder:
    """A GGUF file in `llama_cpp.Llama`, decoded greedily from token ids."""

    def __init__(self, path: Path, threads: int, context: int) -> None:
        self.lib = _llama_cpp()
        self.llm = self.lib.Llama(
            model_path=str(path),
            n_ctx=context,
            n_batch=context,
            n_threads=threads,
            n_threads_batch=threads,
            seed=0,
            verbose=False,
        )
        self.vocab = int(self.llm.n_vocab())

    def logits(self) -> np.ndarray:
        """Logits (vocab,) of the last evaluated token (a view into llama.cpp's buffer)."""
        pointer = self.lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.vocab,))  # fmt: skip

    def prompt_logits(self, prompt: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(prompt)
        return self.logits().copy()

    def decode(self, prompt: list[int], new_tokens: int) -> tuple[float, list[float], list[int]]:
        """(prefill seconds, seconds of each step after the first token, tokens)."""
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(prompt)
        tokens = [int(np.argmax(self.logits()))]
        times, last = [], time.perf_counter()
        prefill = last - start
        for _ in range(new_tokens - 1):
            self.llm.eval([tokens[-1]])
            tokens.append(int(np.argmax(self.logits())))
            now = time.perf_counter()
            times.append(now - last)
            last = now
        return prefill, times, tokens


def ours_decode(
    model: BitNetForCausalLM, prompt: list[int], new_tokens: int
) -> tuple[float, list[float], list[int]]:
    """(prefill seconds, seconds of each step after the first token, tokens) for r3mes."""
    start = time.perf_counter()
    steps = generate_token_ids(
        model, [prompt], GenerationConfig(max_new_tokens=new_tokens), pad_id=0
    )
    tokens = [int(next(steps)[0])]
    times, last = [], time.perf_counter()
    prefill = last - start
    for step in steps:  # EOS may end it early: the steps made are what is counted
        tokens.append(int(step[0]))
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return prefill, times, tokens


@contextlib.contextmanager
def silu_ffn(model: BitNetForCausalLM) -> Iterator[None]:
    """r3mes with llama.cpp's `bitnet` FFN activation (SiLU for squared ReLU), for a check."""
    mlps: list[Any] = [layer.mlp for layer in model.model.layers]
    for mlp in mlps:

        def forward(x: torch.Tensor, mlp: Any = mlp) -> torch.Tensor:
            hidden = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
            out: torch.Tensor = mlp.down_proj(mlp.ffn_sub_norm(hidden))
            return out

        mlp.forward = forward  # an instance attribute: nn.Module calls it instead
    try:
        yield
    finally:
        for mlp in mlps:
            del mlp.forward


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """How close two logit vectors are: relative max difference, cosine, top-1, top-10."""
    scale = float(np.abs(ours).max()) or 1.0
    cosine = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs) or 1.0))
    top_ours, top_theirs = np.argsort(-ours)[:10], np.argsort(-theirs)[:10]
    return {
        "max_rel_diff": round(float(np.abs(ours - theirs).max()) / scale, 4),
        "cosine": round(cosine, 5),
        "top1_same": bool(top_ours[0] == top_theirs[0]),
        "top10_overlap": len(set(top_ours.tolist()) & set(top_theirs.tolist())),
    }


MIN_COSINE = 0.99
"""Least cosine between llama.cpp's next-token logits and r3mes' (SiLU feed-forward, as
llama.cpp's `bitnet` graph has): measured 0.9990 quick, 0.9937 at 2B."""


def logits_check(
    model: BitNetForCausalLM, llama: LlamaDecoder, prompt: list[int]
) -> dict[str, Any]:
    ids = torch.tensor([prompt])
    theirs = llama.prompt_logits(prompt)
    with torch.no_grad():
        relu2 = model(ids)[0, -1].numpy()
        with silu_ffn(model):
            silu = model(ids)[0, -1].numpy()
    return {"vs_r3mes_relu2": agreement(relu2, theirs), "vs_r3mes_silu": agreement(silu, theirs)}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the bitnet-quick shape")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every core)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs (0: 3 quick, 3)")
    parser.add_argument("--new-tokens", type=int, default=0, help="decoded (0: 32 quick, 32)")
    parser.add_argument("--embedding", choices=EMBEDDING_TYPES, default="auto",
                        help="GGUF embedding type (auto: as the checkpoint stores it)")  # fmt: skip
    args = parser.parse_args()
    if args.threads < 0 or args.repeats < 0 or args.new_tokens < 0:
        parser.error("--threads, --repeats and --new-tokens must be 0 (default) or more")
    if args.new_tokens == 1:
        parser.error("--new-tokens must be 0 (default) or at least 2 (steps after the first)")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a checkpoint folder (no config.json)")
    return args


def main() -> None:
    args = _parse_args()
    if not kernels.available():
        raise SystemExit("the native ternary kernel is not built: `pip install -e .`")
    _llama_cpp()  # fail before minutes of export when it is missing
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="r3mes-llamacpp-e2e-") as tmp:
        folder = args.model or write_random_checkpoint(
            preset("bitnet-quick" if args.quick else "bitnet-2b4t"), Path(tmp) / "m", seed=0
        )
        start = time.perf_counter()
        try:
            exported = export_gguf(folder, Path(tmp) / "model.gguf", embedding_type=args.embedding)
            # r3mes holds its head as the GGUF does where it can: bfloat16 for BF16, else float32
            embd = next(t for t in exported.tensors if t.name == "token_embd.weight")
            held = "bfloat16" if embd.ggml_type == "BF16" else "float32"
            model = load_pretrained(folder, embedding_dtype=held)
        except R3mesError as exc:
            raise SystemExit(f"--model: {exc}") from exc
        export_s = time.perf_counter() - start
        run(model, exported, args, threads, export_s)


def run(
    model: BitNetForCausalLM,
    exported: GgufExport,
    args: argparse.Namespace,
    threads: int,
    export_s: float,
) -> None:
    new_tokens = args.new_tokens or 32
    repeats = args.repeats or 3
    load_before = round(os.getloadavg()[0], 2)
    vocab = model.config.vocab_size
    prompt = [(7 + 31 * i) % vocab for i in range(PROMPT_TOKENS)]
    llama = LlamaDecoder(exported.path, threads, PROMPT_TOKENS + new_tokens + 8)
    check = logits_check(model, llama, prompt)
    silu = check["vs_r3mes_silu"]
    if silu["cosine"] < MIN_COSINE or not silu["top1_same"]:
        # the same weights through llama.cpp's (SiLU) graph must give r3mes-with-SiLU's
        # logits up to the two activation quantizations: anything else is a wrong export
        raise SystemExit(f"the GGUF does not compute the checkpoint's model: {check}")
    ours_decode(model, prompt, 4)  # warm-up: first-call allocations on both sides
    llama.decode(prompt, 4)
    best = {"ours_step": float("inf"), "ours_prefill": float("inf"),
            "llama_step": float("inf"), "llama_prefill": float("inf")}  # fmt: skip
    every: dict[str, list[float]] = {"ours": [], "llama": []}
    ours_count = new_tokens - 1
    for _ in range(repeats):  # interleaved: a burst of load hits both sides alike
        prefill, times, tokens = ours_decode(model, prompt, new_tokens)
        ours_count = len(times)
        best["ours_step"] = min(best["ours_step"], sum(times) / max(ours_count, 1))
        best["ours_prefill"] = min(best["ours_prefill"], prefill)
        every["ours"].extend(times)
        prefill, times, _ = llama.decode(prompt, new_tokens)
        best["llama_step"] = min(best["llama_step"], sum(times) / len(times))
        best["llama_prefill"] = min(best["llama_prefill"], prefill)
        every["llama"].extend(times)
    ours_rate, theirs_rate = 1.0 / best["ours_step"], 1.0 / best["llama_step"]
    median = {side: float(np.median(times)) for side, times in every.items()}
    row: dict[str, Any] = {
        "figure": "decode_tokens_per_s_batch1_vs_llamacpp_tq2_0",
        "value": round(ours_rate, 2),
        "unit": "tokens/s",
        "baseline": round(theirs_rate, 2),
        "ratio": round(ours_rate / theirs_rate, 3),
        "goal": "measured (ratio > 1: r3mes faster)",
        "prefill_ms": {
            "r3mes": round(best["ours_prefill"] * 1e3, 1),
            "llamacpp": round(best["llama_prefill"] * 1e3, 1),
        },  # fmt: skip
        # every step of every repeat: the median is less at the mercy of one quiet window
        "median_step_ms": {
            "r3mes": round(median["ours"] * 1e3, 1),
            "llamacpp": round(median["llama"] * 1e3, 1),
        },  # fmt: skip
        "median_step_ratio": round(median["llama"] / median["ours"], 3),
        "prompt_tokens": PROMPT_TOKENS,
        "decoded_tokens": {"r3mes": ours_count + 1, "llamacpp": new_tokens},
        "repeats": repeats,
        "logits": check,
        "weight_bytes": {"r3mes_held": held_bytes(model), "gguf": exported.bytes_by_type()},
        "vocab": exported.vocab_source,
        "threads": threads,
        "isa": kernels.current_isa(),
        "shape": f"h{model.config.hidden_size}xL{model.config.num_hidden_layers}",
        "export_s": round(export_s, 1),
        "load_avg": [load_before, round(os.getloadavg()[0], 2)],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **cpu_description(),
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
