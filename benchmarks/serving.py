"""Serving figures: multi-LoRA batching throughput, time to first token, adapter load latency.

Run: .venv/bin/python -m benchmarks.serving [--quick] [--model DIR] [--max-tokens N]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.

All in one run, on one engine configuration each:
* 8 concurrent requests on 8 different adapters, decoded together (mixed-adapter batches)
  vs the same 8 requests on the base model alone (goal: ratio >= 0.8);
* the same 8 adapter requests served by switching one adapter at a time (max_loras=1,
  so each adapter's request runs alone) (goal: mixed batching >= 3x);
* the first comparison again with the network's own adapter shape (r=8 on q/v/o);
* median time to first token under that load, and adapter load latency from a PEFT dir;
* the process's peak RSS over the batched-engine runs (high-water mark reset after the model
  and adapters are made) against what they need: the runtime (python + torch + r3mes after
  one tiny forward, measured first), the model as held, the adapters in the engine's host
  cache, one copy of the 8 rank-r adapters (the largest batch layout: each row its own
  adapter), the KV cache's peak and 64 MiB of working memory (goal <= 1).
The model is the shipped base model when present, else a random model of similar shape;
`--model DIR` serves a checkpoint folder instead (e.g. the 2B-4T shape written by
`r3mes model init --config bitnet-2b4t --out DIR`), with the folder's `tokenizer.json` or, where
it has none (random checkpoints), the shipped tokenizer with placeholder tokens added up to
the model's vocabulary (so every sampled id decodes). The shipped model's projections keep
an unpacked float copy (`cache_unpacked`, as `r3mes serve` does); a `--model` checkpoint runs
on its packed weights (the native ternary kernel): at 2B a float32 copy would be 8 GB.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.machine import peak_rss, reset_peak_rss
from benchmarks.ternary import WORKING_SLACK, held_bytes, runtime_rss
from r3mes.model.checkpoint import EMBEDDING_DTYPES
from r3mes.model.config import BitNetConfig
from r3mes.model.lora import LoraConfig, apply_lora, lora_state_dict
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.peft_io import save_peft_adapter
from r3mes.model.tokenizer import Tokenizer, train_bpe_tokenizer
from r3mes.serve.engine import EngineConfig, ServingEngine
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest

N_REQUESTS = 8
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NETWORK_TARGETS = ("q_proj", "v_proj", "o_proj")  # what the network's miners train
PROMPTS = [
    "write a python function that adds two numbers",
    "the court ruled that the contract was void",
    "tell me a story about a fox",
    "how do I sort a list",
    "what is the capital of france",
    "explain lora adapters in one line",
    "hello there, how are you",
    "summarise the following text",
]


def load_folder(
    folder: Path, embedding_dtype: str = "float32"
) -> tuple[BitNetForCausalLM, Tokenizer, str]:
    """A checkpoint folder's model (embedding held in `embedding_dtype`) and tokenizer.

    A folder without `tokenizer.json` (a random checkpoint from `r3mes model init`) gets the
    shipped tokenizer with placeholder tokens `<rN>` added up to the model's vocabulary, so
    every id the random model samples decodes.
    """
    from tokenizers import AddedToken

    from r3mes.model.checkpoint import load_pretrained
    from r3mes.model.shipped import shipped_model_dir
    from r3mes.model.tokenizer import TOKENIZER_FILE, load_tokenizer

    model = load_pretrained(folder, embedding_dtype=embedding_dtype)
    vocab = model.config.vocab_size
    if (folder / TOKENIZER_FILE).is_file():
        return model, load_tokenizer(folder), folder.resolve().name
    tok = load_tokenizer(shipped_model_dir())
    if tok.vocab_size > vocab:
        raise SystemExit(f"--model {folder}: vocabulary {vocab} < the shipped tokenizer's")
    extra = [AddedToken(f"<r{i}>", special=False) for i in range(vocab - tok.vocab_size)]
    inner = tok._inner  # a fresh tokenizer, widened for this benchmark only
    inner.add_tokens(extra)
    return model, Tokenizer(inner), folder.resolve().name


def load_model() -> tuple[BitNetForCausalLM, Tokenizer, str]:
    try:
        from r3mes.model.shipped import SHIPPED_MODEL_NAME, load_shipped_model

        model, tok = load_shipped_model()
        return model, tok, SHIPPED_MODEL_NAME
    except Exception:  # not built yet: a random model of the same order of size
        tok = train_bpe_tokenizer(PROMPTS * 10, vocab_size=512)
        config = BitNetConfig(
            vocab_size=tok.vocab_size,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_id,
            eos_token_id=tok.eos_id,
            pad_token_id=tok.pad_id,
        )
        torch.manual_seed(0)
        return BitNetForCausalLM(config), tok, "random-256x4"


def write_adapters(
    model: BitNetForCausalLM, folder: Path, rank: int, targets: tuple[str, ...] = TARGETS
) -> list[Path]:
    """Eight random PEFT adapters for `model`, written to disk."""
    config = LoraConfig(r=rank, alpha=2 * rank, target_modules=targets)
    apply_lora(model, config, name="bench")
    shapes = {k: v.shape for k, v in lora_state_dict(model, "bench").items()}
    from r3mes.model.lora import remove_adapter

    remove_adapter(model, "bench")
    paths = []
    for i in range(N_REQUESTS):
        gen = torch.Generator().manual_seed(i)
        state = {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}
        paths.append(save_peft_adapter(folder / f"{folder.name}{i}", state, config, "bench"))
    return paths


def run_batch(
    engine: ServingEngine, adapters: list[str | None], max_tokens: int
) -> dict[str, float]:
    """Submit all requests at once; tokens/s over the whole batch and median TTFT."""
    done = threading.Barrier(len(adapters) + 1)
    first: list[float] = []
    generated: list[int] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def sink_for() -> Any:
        seen = [False]

        def sink(event: EngineEvent) -> None:
            with lock:
                if not seen[0]:
                    seen[0] = True
                    first.append(time.perf_counter() - start)
                if isinstance(event, FinishEvent):
                    generated.append(event.completion_tokens)
            if isinstance(event, FinishEvent):
                threading.Thread(target=done.wait).start()

        return sink

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    for i, adapter in enumerate(adapters):
        ids = engine.encode_prompt(PROMPTS[i % len(PROMPTS)])
        engine.submit(GenerationRequest(prompt_ids=ids, adapter=adapter, params=params), sink_for())
    done.wait()
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": sum(generated) / elapsed, "ttft_s": statistics.median(first)}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def engine_for(
    model: BitNetForCausalLM, tok: Tokenizer, name: str, paths: list[Path], max_loras: int
) -> ServingEngine:
    config = EngineConfig(max_batch_size=N_REQUESTS, max_loras=max_loras, max_prefills_per_step=8)
    engine = ServingEngine(model, tok, model_name=name, config=config)
    for i, path in enumerate(paths):
        engine.load_adapter(f"a{i}", path)
    return engine


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit, **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter generations (< 1 minute)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder to serve")
    parser.add_argument(
        "--max-tokens", type=int, default=0, help="tokens per request (0: 64 quick, 256 full)"
    )
    parser.add_argument(
        "--embedding", choices=sorted(EMBEDDING_DTYPES), default="float32",
        help="with --model: hold the embedding and head in this dtype",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.rank < 1 or args.max_tokens < 0:
        parser.error("--threads, --repeats and --rank must be >= 1, --max-tokens >= 0")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a checkpoint folder (no config.json)")
    torch.set_num_threads(args.threads)
    max_tokens = args.max_tokens or (64 if args.quick else 256)
    runtime = runtime_rss()
    model, tok, name = (
        load_model() if args.model is None else load_folder(args.model, args.embedding)
    )
    model.freeze_backbone()
    if args.model is None:
        for _, layer in model.bit_linears():
            layer.cache_unpacked(True)
        fresh: BitNetForCausalLM | None = copy.deepcopy(model)  # each engine wraps its own
    else:
        fresh = None  # loaded again after the first engine is gone: one 2B copy at a time
    names: list[str | None] = [f"a{i}" for i in range(N_REQUESTS)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_adapters(model, Path(tmp) / "a", args.rank)
        real = write_adapters(model, Path(tmp) / "r", 8, NETWORK_TARGETS)
        reset_peak_rss()
        multi = engine_for(model, tok, name, paths, max_loras=N_REQUESTS)
        batch_bytes = sum(
            multi.adapters.weights(multi.adapters.entry(f"a{i}")).nbytes for i in range(N_REQUESTS)
        )
        with multi:
            run_batch(multi, names, 4)  # warm up: adapters into the model
            bases, mixes = [], []
            for _ in range(args.repeats):  # interleaved, medians: the host is shared
                bases.append(run_batch(multi, [None] * N_REQUESTS, max_tokens))
                mixes.append(run_batch(multi, names, max_tokens))
            base, mixed = _median(bases), _median(mixes)
            real_names: list[str | None] = [f"r{i}" for i in range(N_REQUESTS)]
            for i, path in enumerate(real):
                multi.load_adapter(f"r{i}", path)
            run_batch(multi, real_names, 4)
            real_bases, real_mixes = [], []
            for _ in range(args.repeats):
                real_bases.append(run_batch(multi, [None] * N_REQUESTS, max_tokens))
                real_mixes.append(run_batch(multi, real_names, max_tokens))
            real_base, real_mixed = _median(real_bases), _median(real_mixes)
            loads = []
            for i in range(5):
                t0 = time.perf_counter()
                multi.load_adapter(f"reload{i}", paths[i])
                loads.append((time.perf_counter() - t0) * 1000)
            peak, memory = peak_rss(), multi.memory()
            held = held_bytes(model)
        if fresh is None:
            del multi, model
            fresh = load_folder(args.model, args.embedding)[0]
            fresh.freeze_backbone()
        switching = engine_for(fresh, tok, name, paths, max_loras=1)
        with switching:
            switched = _median([run_batch(switching, names, max_tokens) for _ in range(2)])
    ratio_base = mixed["tokens_per_s"] / base["tokens_per_s"]
    ratio_switch = mixed["tokens_per_s"] / switched["tokens_per_s"]
    label = f"{name}, {N_REQUESTS} requests x {max_tokens} tokens, r={args.rank}"
    emit(
        f"multi_lora_decode_tokens_per_s vs base model ({label})",
        mixed["tokens_per_s"],
        "tokens/s",
        baseline=round(base["tokens_per_s"], 4),
        ratio=round(ratio_base, 4),
        goal=">= 0.8",
    )
    emit(
        f"multi_lora_decode_tokens_per_s vs base model (network adapter shape: r=8 on "
        f"{'/'.join(t[0] for t in NETWORK_TARGETS)}, {N_REQUESTS} requests x {max_tokens} tokens)",
        real_mixed["tokens_per_s"],
        "tokens/s",
        baseline=round(real_base["tokens_per_s"], 4),
        ratio=round(real_mixed["tokens_per_s"] / real_base["tokens_per_s"], 4),
        goal=">= 0.8",
    )
    emit(
        f"multi_lora_decode_tokens_per_s vs one adapter at a time ({label})",
        mixed["tokens_per_s"],
        "tokens/s",
        baseline=round(switched["tokens_per_s"], 4),
        ratio=round(ratio_switch, 4),
        goal=">= 3",
    )
    emit(
        f"time_to_first_token_median ({label}, 8 adapters)",
        mixed["ttft_s"] * 1000,
        "ms",
        baseline=None,
        ratio=None,
        goal="<= 1000",
    )
    need = runtime + held + memory.adapter_cache + batch_bytes + memory.kv_peak + WORKING_SLACK
    mib = 2**20
    emit(
        f"serving_peak_rss ({label}; batched engine, 8 + 8 adapters loaded)",
        peak / mib,
        "MiB",
        baseline=round(need / mib),
        ratio=round(peak / need, 4),
        goal="<= 1.0 (runtime + model as held + adapter cache + one copy of the batch's "
        "adapters + KV peak + 64 MiB)",
        runtime_mib=round(runtime / mib),
        model_held_mib=round(held / mib),
        adapter_cache_mib=round(memory.adapter_cache / mib),
        batch_adapters_mib=round(batch_bytes / mib),
        kv_peak_mib=round(memory.kv_peak / mib),
    )
    emit(
        f"adapter_load_latency_median (PEFT dir -> host cache, r={args.rank}, 7 targets)",
        statistics.median(loads),
        "ms",
        baseline=None,
        ratio=None,
        goal="<= 500",
    )


if __name__ == "__main__":
    main()
