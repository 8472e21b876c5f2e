"""Top-k compression with and without error feedback, on the shipped model and domain data.

Simulates M honest miners over R rounds per setting, all from the same genesis adapter: each
round every miner trains S steps on its own shard (`assign_shard`), ships its encoded update
(`encode_for_task`: top-k, varint indices, fp16 or int8 values, layout by digest), and the
adapter moves by the mean of the decoded updates. Settings: uncompressed fp32; top-k 10 %,
1 %, 0.1 % with fp16 values; top-k 1 % and 0.6 % with int8 values; each with and without error
feedback. Every setting gets the same rounds, steps, shards and seeds.

Reported per setting: the final held-out loss (ratio to uncompressed, goal <= 1.02) and the
bytes shipped per round (ratio = uncompressed bytes / these bytes, goal >= 100). The
uncompressed baseline counts only the fp32 payload (4 bytes per entry, no header at all), so
the compression ratios are lower bounds. The last two lines are the headline (`HEADLINE`).

    .venv/bin/python -m benchmarks.compression [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from r3mes.work.aggregate import aggregate_dense
from r3mes.work.data import TokenDataset, assign_shard, build_dataset, shard_of
from r3mes.work.domain import build_domain_corpus, domain_corpus_source
from r3mes.work.encoding import decode_update
from r3mes.work.evaluate import heldout_loss
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.submission import encode_for_task
from r3mes.work.task import HyperParams, Task
from r3mes.work.training import initial_adapter_state, train_update, trained_layout

Tensors = dict[str, torch.Tensor]


class ByteTokenizer:
    """Fallback for the tiny model (vocabulary 256)."""

    vocab_size = 256
    eos_id = 2

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def load_model() -> tuple[torch.nn.Module, Any, str]:
    """The shipped model and tokenizer, or the tiny model with a byte tokenizer."""
    try:
        from r3mes.model.shipped import SHIPPED_MODEL_NAME, load_shipped_model

        model, tokenizer = load_shipped_model()
        return model, tokenizer, SHIPPED_MODEL_NAME
    except Exception as exc:  # the shipped model may not be built yet
        from r3mes.model.tiny import make_tiny_model

        print(json.dumps({"note": f"shipped model unavailable ({exc}); using tiny model"}))
        return make_tiny_model(0), ByteTokenizer(), "tiny"


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    topk_ppm: int | None  # None: uncompressed fp32
    feedback: bool
    value_format: str = "fp16"


SETTINGS = [Setting("uncompressed", None, False)] + [
    Setting(f"topk{label}_{fmt}{'_ef' if ef else ''}", ppm, ef, fmt)
    for ppm, label, fmt in (
        (100_000, "10%", "fp16"),
        (10_000, "1%", "fp16"),
        (1_000, "0.1%", "fp16"),
        (10_000, "1%", "int8"),
        (6_000, "0.6%", "int8"),
    )
    for ef in (True, False)
]
HEADLINE = "topk0.6%_int8_ef"


@dataclasses.dataclass(frozen=True)
class Outcome:
    loss: float
    """Final held-out loss (nats)."""
    bytes_per_round: float
    """Bytes all miners ship in one round, mean over rounds."""
    kept_per_update: float
    """Kept entries per miner update, mean (the dense entry count when uncompressed)."""


def simulate(
    setting: Setting,
    *,
    model: torch.nn.Module,
    dataset: TokenDataset,
    base: Task,
    miners: int,
    rounds: int,
    eval_chunks: int,
) -> Outcome:
    """Final held-out loss and bytes shipped for one setting."""
    hyper = dataclasses.replace(
        base.hyper, topk_ppm=setting.topk_ppm or 1_000_000, value_format=setting.value_format
    )
    task0 = dataclasses.replace(base, hyper=hyper)
    adapter = initial_adapter_state(model, task0)
    layout = trained_layout(adapter)
    residuals: dict[str, Tensors | None] = {}
    shipped = kept = 0
    for rnd in range(rounds):
        seed = 1000 + rnd
        claimed: set[int] = set()
        dense_updates: list[tuple[Tensors, int]] = []
        for m in range(miners):
            miner = f"remes1miner{m}"
            shard_index = assign_shard(
                seed=seed, miner=miner, n_shards=base.n_shards, claimed=frozenset(claimed)
            )
            claimed.add(shard_index)
            task = dataclasses.replace(
                task0, round=rnd, seed=seed, miner=miner, shard_index=shard_index
            )
            shard = shard_of(dataset, shard_index=shard_index, n_shards=base.n_shards)
            raw = train_update(task=task, model=model, adapter_state=adapter, shard=shard)
            if setting.topk_ppm is None:
                numel = sum(v.numel() for v in raw.values())
                shipped += 4 * numel  # fp32 payload only: a lower bound for any dense format
                kept += numel
                dense_updates.append((raw, 1))
                continue
            residual = residuals.get(miner) if setting.feedback else None
            sub = encode_for_task(task=task, raw=raw, residual=residual, executor_class=CPU_DET_V1)
            shipped += len(sub.encoded)
            residuals[miner] = sub.next_residual
            decoded = decode_update(sub.encoded, layout=layout)
            kept += sum(st.indices.numel() for st in decoded.tensors.values())
            dense_updates.append((decoded.dense(), 1))
        adapter = aggregate_dense(adapter, dense_updates)
    cfg = task0.lora_config()
    loss = heldout_loss(model, adapter, dataset, max_chunks=eval_chunks, lora_config=cfg)
    return Outcome(loss, shipped / rounds, kept / (rounds * miners))


def line(figure: str, value: float, unit: str, baseline: float | None, goal: str) -> None:
    """One result line; for bytes the ratio is the compression factor (higher is better)."""
    ratio = None if baseline is None else round(value / baseline, 4)
    if unit == "bytes" and baseline is not None:
        ratio = round(baseline / value, 2)
    out = {"figure": figure, "value": round(value, 4), "unit": unit}
    print(
        json.dumps(
            out | {"baseline": baseline and round(baseline, 4), "ratio": ratio, "goal": goal}
        )
    )


def report(name: str, got: Outcome, ref: Outcome, base_loss: float, seconds: float) -> None:
    """The lines of one setting: loss and bytes against uncompressed, plus context."""
    line(f"heldout_loss/{name}", got.loss, "nats", ref.loss, "<= 1.02")
    line(f"bytes_per_round/{name}", got.bytes_per_round, "bytes", ref.bytes_per_round, ">= 100")
    gained = (base_loss - got.loss) / (base_loss - ref.loss) if base_loss != ref.loss else 1.0
    info = {
        "setting": name,
        "loss_ratio": round(got.loss / ref.loss, 4),
        "bytes_ratio": round(ref.bytes_per_round / got.bytes_per_round, 2),
        "improvement_retained": round(gained, 4),  # (base - loss) / (base - uncompressed)
        "kept_per_update": round(got.kept_per_update, 1),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(info))


def base_task(*, model_name: str, miners: int, steps: int, lr: str) -> Task:
    """The round-0 task every setting derives its tasks from."""
    hyper = HyperParams(
        lr=lr,
        steps=steps,
        batch_size=4,
        seq_len=64,
        rank=8,
        alpha=16,
        target_modules=("o_proj", "q_proj", "v_proj"),
    )
    return Task(
        round=0,
        seed=1000,
        miner="remes1miner0",
        base_model_cid=model_name,
        adapter_cid="genesis",
        dataset_cid="domain",
        shard_index=0,
        n_shards=miners,
        hyper=hyper,
        executor_class=CPU_DET_V1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--miners", type=int, default=None, help="default 4 (quick: 2)")
    parser.add_argument("--rounds", type=int, default=None, help="default 40 (quick: 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps per task, default 2")
    parser.add_argument("--lr", default="0.005")
    args = parser.parse_args()
    torch.set_num_threads(1)
    miners = args.miners or (2 if args.quick else 4)
    rounds = args.rounds or (3 if args.quick else 40)
    steps = args.steps or 2
    eval_chunks = 32 if args.quick else 128
    model, tokenizer, model_name = load_model()
    texts = build_domain_corpus()[: 8 if args.quick else None]
    base = base_task(model_name=model_name, miners=miners, steps=steps, lr=args.lr)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_dataset(texts, tokenizer, chunk_len=64, out_path=Path(tmp) / "domain.r3tok")
        dataset = TokenDataset(path)
        run = {"model": model_name, "chunks": len(dataset), "miners": miners, "rounds": rounds}
        run |= {"steps": steps, "lr": args.lr, "eval_chunks": eval_chunks}
        print(json.dumps(run | {"source": domain_corpus_source()[:80]}))
        base_loss = heldout_loss(model, None, dataset, max_chunks=eval_chunks)
        line("heldout_loss/base_model", base_loss, "nats", None, "reference")
        results: dict[str, Outcome] = {}
        for setting in SETTINGS:
            t0 = time.perf_counter()
            results[setting.name] = simulate(
                setting,
                model=model,
                dataset=dataset,
                base=base,
                miners=miners,
                rounds=rounds,
                eval_chunks=eval_chunks,
            )
            ref = results["uncompressed"]
            report(setting.name, results[setting.name], ref, base_loss, time.perf_counter() - t0)
    best, ref = results[HEADLINE], results["uncompressed"]
    line(
        f"HEADLINE/bytes_per_round/{HEADLINE}",
        best.bytes_per_round,
        "bytes",
        ref.bytes_per_round,
        ">= 100",
    )
    line(f"HEADLINE/heldout_loss/{HEADLINE}", best.loss, "nats", ref.loss, "<= 1.02")


if __name__ == "__main__":
    main()
