"""Top-k compression with and without error feedback, on the shipped model and domain data.

Simulates M honest miners over R rounds per configuration (uncompressed fp32, top-k 10 %, 1 %,
0.1 % with fp16 values, each with and without error feedback), all from the same genesis
adapter: each round every miner trains its own shard (`assign_shard`), ships its encoded
update, and the adapter moves by the mean of the decompressed updates. Reports, per
configuration, the final held-out loss (ratio to uncompressed, goal <= 1.02) and the bytes
shipped per round (ratio = uncompressed bytes / these bytes, goal >= 100).

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
from r3mes.work.canonical import dump_canonical
from r3mes.work.data import TokenDataset, assign_shard, build_dataset, shard_of
from r3mes.work.domain import build_domain_corpus, domain_corpus_source
from r3mes.work.encoding import decode_update
from r3mes.work.evaluate import heldout_loss
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.submission import encode_for_task
from r3mes.work.task import HyperParams, Task
from r3mes.work.training import initial_adapter_state, train_update

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


SETTINGS = [Setting("uncompressed", None, False)] + [
    Setting(f"topk{label}{'_ef' if ef else ''}", ppm, ef)
    for ppm, label in ((100_000, "10%"), (10_000, "1%"), (1_000, "0.1%"))
    for ef in (True, False)
]


def simulate(
    setting: Setting,
    *,
    model: torch.nn.Module,
    dataset: TokenDataset,
    base: Task,
    miners: int,
    rounds: int,
    eval_chunks: int,
) -> tuple[float, float]:
    """(final held-out loss, mean bytes shipped per round) for one setting."""
    task0 = dataclasses.replace(
        base, hyper=dataclasses.replace(base.hyper, topk_ppm=setting.topk_ppm or 1_000_000)
    )
    adapter = initial_adapter_state(model, task0)
    residuals: dict[str, Tensors | None] = {}
    shipped = 0
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
                shipped += len(dump_canonical(raw, {}))
                dense_updates.append((raw, 1))
                continue
            residual = residuals.get(miner) if setting.feedback else None
            sub = encode_for_task(task=task, raw=raw, residual=residual, executor_class=CPU_DET_V1)
            shipped += len(sub.encoded)
            residuals[miner] = sub.next_residual
            dense_updates.append((decode_update(sub.encoded).dense(), 1))
        adapter = aggregate_dense(adapter, dense_updates)
    cfg = task0.lora_config()
    loss = heldout_loss(model, adapter, dataset, max_chunks=eval_chunks, lora_config=cfg)
    return loss, shipped / rounds


def line(figure: str, value: float, unit: str, baseline: float | None, goal: str) -> None:
    ratio = None if baseline is None else round(value / baseline, 4)
    if unit == "bytes" and baseline is not None:
        ratio = round(baseline / value, 2)  # compression factor: higher is better
    out = {"figure": figure, "value": round(value, 4), "unit": unit}
    print(
        json.dumps(
            out | {"baseline": baseline and round(baseline, 4), "ratio": ratio, "goal": goal}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--miners", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", default="0.005")
    args = parser.parse_args()
    torch.set_num_threads(1)
    miners = args.miners or (2 if args.quick else 4)
    rounds = args.rounds or (2 if args.quick else 6)
    steps = args.steps or (3 if args.quick else 10)
    model, tokenizer, model_name = load_model()
    texts = build_domain_corpus()[: 8 if args.quick else None]
    with tempfile.TemporaryDirectory() as tmp:
        path = build_dataset(texts, tokenizer, chunk_len=64, out_path=Path(tmp) / "domain.r3tok")
        dataset = TokenDataset(path)
        base = Task(
            round=0,
            seed=1000,
            miner="remes1miner0",
            base_model_cid=model_name,
            adapter_cid="genesis",
            dataset_cid="domain",
            shard_index=0,
            n_shards=miners,
            hyper=HyperParams(
                lr=args.lr,
                steps=steps,
                batch_size=4,
                seq_len=64,
                rank=8,
                alpha=16,
                target_modules=("o_proj", "q_proj", "v_proj"),
            ),
            executor_class=CPU_DET_V1,
        )
        eval_chunks = 32 if args.quick else 128
        print(
            json.dumps(
                {
                    "model": model_name,
                    "chunks": len(dataset),
                    "miners": miners,
                    "rounds": rounds,
                    "steps": steps,
                    "source": domain_corpus_source()[:80],
                }
            )
        )
        base_loss = heldout_loss(model, None, dataset, max_chunks=eval_chunks)
        line("heldout_loss/base_model", base_loss, "nats", None, "reference")
        results = {}
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
            ref_loss, ref_bytes = results["uncompressed"]
            loss, nbytes = results[setting.name]
            line(f"heldout_loss/{setting.name}", loss, "nats", ref_loss, "<= 1.02")
            line(f"bytes_per_round/{setting.name}", nbytes, "bytes", ref_bytes, ">= 100")
            gained = (base_loss - loss) / (base_loss - ref_loss) if base_loss != ref_loss else 1.0
            print(
                json.dumps(
                    {
                        "figure": f"improvement_retained/{setting.name}",
                        "value": round(gained, 4),
                        "unit": "fraction of uncompressed gain",
                        "baseline": None,
                        "ratio": None,
                        "goal": "informative",
                    }
                )
            )
            print(
                json.dumps({"setting": setting.name, "seconds": round(time.perf_counter() - t0, 1)})
            )


if __name__ == "__main__":
    main()
