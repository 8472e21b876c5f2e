"""Update compression with and without error feedback, on the shipped model and domain data.

Simulates M honest miners over R rounds per setting, all from the same genesis adapter: each
round every miner trains S steps on its own shard (`assign_shard`), ships its encoded update
(`encode_for_task`, the code miners and validators run), and the adapter moves by the mean of
the decoded updates. Settings: uncompressed fp32; the previous headline, top-k 0.6 % with int8
values and error feedback (update format v2: varint indices, safetensors header); and the
seeded sign format (v3: the round seed picks 10 %, 6 % or 4 % of each tensor's entries, the
same for every miner, so no indices travel; one sign bit per entry, one fp16 scale per tensor,
a 65-byte binary header), with error feedback, and at 6 % without. Every setting gets the same
rounds, steps, shards and seeds.

Reported per setting: the final held-out loss (ratio to uncompressed, goal <= 1.02), the
bytes shipped per round (ratio = uncompressed bytes / these bytes, goal >= 300) and the gain
retained, ``(base loss - loss) / (base loss - uncompressed loss)``: the share of the loss
improvement that uncompressed training makes which this setting keeps (goal >= 0.5, stated
here: compression may cost at most half of what training gains). The uncompressed baseline
counts only the fp32 payload (4 bytes per entry, no header at all), so the compression ratios
are lower bounds; its own lines carry no goal. The last three lines are the headline
(`HEADLINE`).

The loss goal means something only when training moves the loss by clearly more than its 2 %
tolerance: `training_gain` (uncompressed loss / base loss, goal <= 0.96) is printed first, and
when it misses, the loss and gain-retained lines say they are not goal-bearing.

`--quick` (under a minute on an idle 2-core machine) runs only the uncompressed baseline and
the headline, with 2 miners over 30 rounds on 8 corpus modules: enough training for the
figures to be goal-bearing, but a shorter schedule than the full run (4 miners, 40 rounds),
and error feedback needs rounds to catch up (each entry is picked every ~17 rounds at 6 %).
Its loss goal is therefore `QUICK_LOSS_GOAL` (<= 1.03, measured 1.024); the bytes and
gain-retained goals are the full run's. The issue's goal (<= 1.02 at >= 300x) belongs to the
full run.

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


SETTINGS = (
    [Setting("uncompressed", None, False)]
    + [Setting("topk0.6%_int8_ef", 6_000, True, "int8")]
    + [
        Setting(f"sign{label}{'_ef' if ef else ''}", ppm, ef, "sign")
        for ppm, label, ef in (
            (100_000, "10%", True),
            (60_000, "6%", True),
            (60_000, "6%", False),
            (40_000, "4%", True),
        )
    ]
)
HEADLINE = "sign6%_ef"
LOSS_GOAL = "<= 1.02"
GAIN_GOAL = ">= 0.5"
QUICK_LOSS_GOAL = "<= 1.03"
"""The short run's loss goal (see the module docstring); the full run's is `LOSS_GOAL`."""
BYTES_GOAL = ">= 300"
BASELINE = "none (the baseline)"
TRAINING_GAIN_GOAL = 0.96
"""Uncompressed loss / base loss must be at most this (a 4 % gain, twice the loss tolerance)."""
NOT_GOAL_BEARING = "none (training gain under 4 %: not goal-bearing)"


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
    ratio = None if not baseline else round(value / baseline, 4)
    if unit == "bytes" and baseline is not None:
        ratio = round(baseline / value, 2)
    out = {"figure": figure, "value": round(value, 4), "unit": unit}
    print(
        json.dumps(
            out | {"baseline": baseline and round(baseline, 4), "ratio": ratio, "goal": goal}
        )
    )


def gain_retained(got: Outcome, ref: Outcome, base_loss: float) -> float:
    """(base - loss) / (base - uncompressed loss); 0 when uncompressed training gained nothing."""
    gain = base_loss - ref.loss
    return (base_loss - got.loss) / gain if gain > 0 else 0.0


def report(
    name: str,
    got: Outcome,
    ref: Outcome,
    *,
    base_loss: float,
    seconds: float,
    prefix: str = "",
    quick: bool = False,
) -> None:
    """The lines of one setting: loss, bytes and gain retained against uncompressed."""
    bearing = ref.loss / base_loss <= TRAINING_GAIN_GOAL
    loss_goal = QUICK_LOSS_GOAL if quick else LOSS_GOAL
    loss_goal, gain_goal = (loss_goal, GAIN_GOAL) if bearing else (NOT_GOAL_BEARING,) * 2
    if name == "uncompressed":
        loss_goal = gain_goal = BASELINE
    line(f"{prefix}heldout_loss/{name}", got.loss, "nats", ref.loss, loss_goal)
    line(
        f"{prefix}bytes_per_round/{name}",
        got.bytes_per_round,
        "bytes",
        ref.bytes_per_round,
        BASELINE if name == "uncompressed" else BYTES_GOAL,
    )
    line(f"{prefix}gain_retained/{name}", gain_retained(got, ref, base_loss), "1", None, gain_goal)
    if prefix:
        return
    info = {
        "setting": name,
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
    parser.add_argument("--rounds", type=int, default=None, help="default 40 (quick: 30)")
    parser.add_argument("--steps", type=int, default=None, help="steps per task, default 2")
    parser.add_argument("--lr", default="0.005")
    args = parser.parse_args()
    torch.set_num_threads(1)
    miners = args.miners or (2 if args.quick else 4)
    rounds = args.rounds or (30 if args.quick else 40)
    settings = (
        [s for s in SETTINGS if s.name in ("uncompressed", HEADLINE)] if args.quick else SETTINGS
    )
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
        run |= {"settings": [s.name for s in settings]}
        print(json.dumps(run | {"source": domain_corpus_source()[:80]}))
        base_loss = heldout_loss(model, None, dataset, max_chunks=eval_chunks)
        line("heldout_loss/base_model", base_loss, "nats", None, "reference")
        results: dict[str, Outcome] = {}
        for setting in settings:
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
            if setting.name == "uncompressed":
                goal = f"<= {TRAINING_GAIN_GOAL}"
                line("training_gain", ref.loss, "nats", base_loss, goal)
            seconds = time.perf_counter() - t0
            got = results[setting.name]
            report(setting.name, got, ref, base_loss=base_loss, seconds=seconds, quick=args.quick)
    best, ref = results[HEADLINE], results["uncompressed"]
    report(
        HEADLINE, best, ref, base_loss=base_loss, seconds=0.0, prefix="HEADLINE/", quick=args.quick
    )


if __name__ == "__main__":
    main()
