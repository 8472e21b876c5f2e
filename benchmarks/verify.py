"""Cost and soundness of verification: full re-execution, spot checks, the cheat catalogue.

Figures (one JSON line each):
* verify_over_train: full re-execution (`verify`) over training (`build_submission`) for one
  task; goal <= 1.05.
* spot_over_train: a spot check at the default rate (`spot_verify`: trace decode, the checks
  that need no training, the sampled segments) over the miner's training with its trace;
  goal <= 0.15.
* detect_full/<cheat>: share of the cheat's strategies that full re-execution rejects; goal 1.0.
* detect_spot/<cheat>: worst strategy's share of `--seeds` spot seeds whose check rejects it
  (after escalation); goal >= 0.99. Per strategy the seed-free checks run once and every
  segment is re-run once (which segments fail), then the seeds' samples are drawn with the
  real `spot_segments`; one seed per strategy is also run end to end through `spot_verify`.
* detect_single_forged_step: an adaptive cheater forging ONE step's gradient (the least a
  spot check can miss): share of seeds that catch it. No goal: it is the sampled fraction.
* detect_proposer/<lie> and detect_validator/<lie>: share of lies an honest node exposes: a
  re-merge whose digest differs from the proposer's, a dispute (`r3mes.work.dispute.settle`,
  with a real single-step referee) the lying validator loses.
* false_rejects/<n>_threads: honest submissions (distinct miners, shards and rounds) a spot
  check rejects, at 1 and 2 torch threads; goal 0. Escalations of honest work are counted too.
* determinism_rate: fresh processes (1 and 2 threads) training the task give its digest.

    .venv/bin/python -m benchmarks.verify [--quick]

`--quick` runs the catalogue on the 2-layer tiny model (64 steps, as the full run) and 10
honest submissions per thread count, so its cost ratio is mostly fixed overhead; the full
run uses the shipped model and 200. Cost figures are best
of 3 CPU times (`time.process_time`), so other jobs on the box do not inflate them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from r3mes.work.canonical import tensors_digest
from r3mes.work.cheats import Setting, Work, honest_run, miner_cheats, publish
from r3mes.work.data import TokenDataset, build_dataset, shard_of
from r3mes.work.dispute import referee_step, settle
from r3mes.work.domain import build_domain_corpus
from r3mes.work.encoding import decode_update
from r3mes.work.errors import WorkError
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.spot import (
    DEFAULT_SPOT_PPM,
    check_segment,
    precheck,
    spot_segments,
    spot_verify,
)
from r3mes.work.submission import build_submission
from r3mes.work.task import HyperParams, Task, encode_task
from r3mes.work.trace import decode_trace, trace_of
from r3mes.work.training import initial_adapter_state, train_with_trace, trained_layout
from r3mes.work.verify import verify
from r3mes.work.versions import merge_updates, random_update

_CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from pathlib import Path
from benchmarks.compression import load_model
from r3mes.work.data import TokenDataset, shard_of
from r3mes.work.submission import build_submission
from r3mes.work.task import decode_task
task = decode_task(bytes.fromhex(sys.argv[2]))
model, _, _ = load_model()
shard = shard_of(TokenDataset(Path(sys.argv[3])), shard_index=task.shard_index,
                 n_shards=task.n_shards)
print(build_submission(task=task, model=model, adapter_state=None, shard=shard,
                       residual=None).digest)
"""


def emit(figure: str, value: Any, unit: str, *, baseline: Any = None, goal: Any = None) -> None:
    ratio = None
    if isinstance(value, int | float) and isinstance(baseline, int | float) and baseline:
        ratio = round(value / baseline, 4)
    row = {
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "goal": goal,
    }
    print(json.dumps(row), flush=True)


def make_task(
    name: str, *, steps: int, miner: str = "remes1miner0", shard: int = 0, rnd: int = 2
) -> Task:
    return Task(
        round=rnd,
        seed=77 + rnd,
        miner=miner,
        base_model_cid=name,
        adapter_cid="genesis",
        dataset_cid="domain",
        shard_index=shard,
        n_shards=4,
        hyper=HyperParams(
            lr="0.005",
            steps=steps,
            batch_size=4,
            seq_len=64,
            rank=4,
            alpha=8,
            target_modules=("q_proj", "v_proj"),
            topk_ppm=50_000,
        ),
        executor_class=CPU_DET_V1,
    )


def setting_for(task: Task, model: torch.nn.Module, dataset: TokenDataset) -> Setting:
    shard = shard_of(dataset, shard_index=task.shard_index, n_shards=task.n_shards)
    return Setting(task, model, initial_adapter_state(model, task), shard, None)


def run_spot(s: Setting, work: Work, seed: bytes, *, root: str | None = None) -> Any:
    """`spot_verify` of `work`; `root` is the miner's committed root (default: the trace's)."""
    if root is None and work.trace is not None:
        root = _root(work.trace)
    return spot_verify(
        task=s.task,
        submitted=work.update,
        trace_bytes=work.trace,
        trace_root=root,
        model=s.model,
        adapter_state=s.adapter,
        shard=s.shard,
        residual=s.residual,
        executor_class=CPU_DET_V1,
        seed=seed,
        rate_ppm=DEFAULT_SPOT_PPM,
    )


def _root(trace: bytes) -> str | None:
    try:
        return decode_trace(trace).root
    except WorkError:
        return None


def spot_detection(s: Setting, work: Work, seeds: int) -> tuple[float, bool]:
    """(share of seeds whose spot check rejects `work`, full re-execution rejects it)."""
    full = verify(
        task=s.task,
        submitted=work.update,
        model=s.model,
        adapter_state=s.adapter,
        shard=s.shard,
        residual=s.residual,
        executor_class=CPU_DET_V1,
    )
    try:
        update = decode_update(work.update, layout=trained_layout(s.adapter))
    except WorkError:
        out = run_spot(s, work, b"\0")
        return (0.0 if out.verdict.accepted else 1.0), not full.accepted
    prepared = precheck(
        task=s.task,
        update=update,
        trace_bytes=work.trace,
        trace_root=None if work.trace is None else _root(work.trace),
        start=s.adapter,
        residual=s.residual,
        executor_class=CPU_DET_V1,
    )
    if isinstance(prepared, str) or update.meta.task_id != s.task.task_id:
        out = run_spot(s, work, b"\0")  # every seed escalates (or rejects outright)
        return (0.0 if out.verdict.accepted else 1.0), not full.accepted
    n = prepared.trace.steps
    bad = {
        j
        for j in range(n)
        if check_segment(prepared=prepared, task=s.task, model=s.model, shard=s.shard, index=j)
    }
    caught = [
        bool(
            bad
            & set(spot_segments(seed=i.to_bytes(4, "big"), segments=n, rate_ppm=DEFAULT_SPOT_PPM))
        )
        for i in range(seeds)
    ]
    # end to end for one seed: the real spot check agrees with the prediction
    probe = next((i for i, c in enumerate(caught) if c), 0)
    out = run_spot(s, work, probe.to_bytes(4, "big"))
    if out.verdict.accepted == caught[probe] and not full.accepted:
        raise AssertionError(f"spot_verify disagrees with the per-segment prediction: {out}")
    return (0.0 if full.accepted else sum(caught) / seeds), not full.accepted


def catalogue(
    model: torch.nn.Module, dataset: TokenDataset, name: str, *, steps: int, seeds: int
) -> None:
    s = setting_for(make_task(name, steps=steps), model, dataset)
    honest = honest_run(s)
    other = setting_for(make_task(name, steps=steps, miner="remes1other", shard=1), model, dataset)
    stale = setting_for(make_task(name, steps=steps, rnd=1), model, dataset)
    cheats = miner_cheats(
        s,
        honest,
        other=other,
        stale=stale,
        wrong_base=stale.adapter,
        other_shard=shard_of(dataset, shard_index=2, n_shards=4),
    )
    for cheat, strategies in cheats.items():
        spot_rates, full_hits = [], 0
        for _label, work in strategies:
            rate, full_rejects = spot_detection(s, work, seeds)
            spot_rates.append(rate)
            full_hits += full_rejects
        emit(
            f"detect_full/{cheat}",
            full_hits / len(strategies),
            f"share of {len(strategies)} strategies rejected",
            goal=">= 1.0",
        )
        emit(
            f"detect_spot/{cheat}",
            round(min(spot_rates), 4),
            f"worst of {len(strategies)} strategies, share of {seeds} seeds "
            f"at {DEFAULT_SPOT_PPM} ppm",
            goal=">= 0.99",
        )
    single_forged(s, honest, seeds)
    lying_proposer(s, honest, other)
    lying_validator(s, honest, cheats["other_shard"][0][1])


def single_forged(s: Setting, honest: Any, seeds: int) -> None:
    """ONE made-up gradient (random, Adam-consistent) at a middle step, the rest honest."""
    from r3mes.work.cheats import forge_steps
    from r3mes.work.training import run_steps

    steps = s.task.hyper.steps
    k = steps // 2
    states = [honest.checkpoints[i] for i in range(k + 1)]

    def grad(step: int, state: Any) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(step)
        return {key: torch.randn(v.shape, generator=gen) * 0.01 for key, v in state.params.items()}

    forged = forge_steps(states, steps=k + 1, lr=s.task.hyper.lr_float, gradient=grad)
    final, digests, ckpts = run_steps(
        task=s.task,
        model=s.model,
        shard=s.shard,
        adapter_state=s.adapter,
        start=forged.final,
        stop=steps,
        checkpoint_every=1,
    )
    all_ckpts = {**forged.checkpoints, **ckpts}
    delta = {key: final.params[key] - states[0].params[key] for key in sorted(final.params)}
    result = dataclasses.replace(
        forged,
        delta=delta,
        final=final,
        step_digests=(*forged.step_digests, *digests),
        checkpoints=all_ckpts,
    )
    rate, _ = spot_detection(s, publish(s, result), seeds)
    emit(
        "detect_single_forged_step",
        round(rate, 4),
        f"share of {seeds} seeds (one forged step of {steps}; = sampled share)",
        goal=None,
    )


def lying_proposer(s: Setting, honest: Any, other: Setting) -> None:
    """Validators re-merge the listed verified updates and compare digests."""
    a = publish(s, honest).update
    b = publish(other, honest_run(other)).update
    truth = tensors_digest(merge_updates(s.adapter, [a, b]))
    junk = random_update(task=s.task, adapter_state=s.adapter, seed=5).encoded
    honest_merge = merge_updates(s.adapter, [a, b])
    lies = {
        "extra_unverified_update": tensors_digest(merge_updates(s.adapter, [a, b, junk])),
        "dropped_update": tensors_digest(merge_updates(s.adapter, [a])),
        "scaled_merge": tensors_digest(
            {k: s.adapter[k] + 2 * (v - s.adapter[k]) for k, v in honest_merge.items()}
        ),
        "other_base_version": tensors_digest({k: v + 1e-3 for k, v in honest_merge.items()}),
    }
    for lie, digest in lies.items():
        emit(
            f"detect_proposer/{lie}",
            float(digest != truth),
            "1 = the re-merge digest differs from the proposer's",
            goal=">= 1.0",
        )


def lying_validator(s: Setting, honest: Any, cheat: Work) -> None:
    """Disputes against a lying validator, refereed by one re-executed step."""
    truth = list(honest.step_digests)
    steps = len(truth) - 1

    def referee_from(states: dict[int, Any]) -> Callable[[int], str]:
        def referee(lo: int) -> str:
            return referee_step(
                task=s.task,
                model=s.model,
                adapter_state=s.adapter,
                shard=s.shard,
                checkpoint=states[lo].encode(),
                step=lo,
            )

        return referee

    honest_ref = referee_from({**honest.checkpoints, steps: honest.final})
    lost, rounds = 0, []
    for k in range(1, steps + 1):  # rejects honest work, making up states from step k
        lie = truth[:k] + [f"{k:064x}"] * (steps + 1 - k)
        out = settle(claimant=truth, respondent=lie, referee=honest_ref)
        lost += out.winner == "claimant"
        rounds.append(out.rounds)
    emit(
        "detect_validator/rejects_honest_work",
        lost / steps,
        f"share of {steps} disputes the liar loses (max {max(rounds)} rounds)",
        goal=">= 1.0",
    )
    cheat_trace = decode_trace(cheat.trace) if cheat.trace else None
    assert cheat_trace is not None
    claim = list(cheat_trace.step_digests)  # the liar vouches for the cheater's trace
    out = settle(claimant=claim, respondent=truth, referee=honest_ref)
    emit(
        "detect_validator/accepts_a_cheat",
        float(out.winner == "respondent"),
        f"1 = the liar loses the dispute ({out.rounds} rounds, step {out.step})",
        goal=">= 1.0",
    )


def honest_population(
    model: torch.nn.Module, dataset: TokenDataset, name: str, *, count: int, steps: int
) -> None:
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rejects = escalations = 0
        for i in range(count):
            task = make_task(
                name, steps=steps, miner=f"remes1honest{i}", shard=i % 4, rnd=3 + i % 5
            )
            # a smaller batch than the catalogue's: 400 trainings must fit a run
            task = dataclasses.replace(
                task, hyper=dataclasses.replace(task.hyper, batch_size=2, seq_len=32)
            )
            s = setting_for(task, model, dataset)
            work = publish(s, honest_run(s))
            out = run_spot(s, work, i.to_bytes(4, "big"))
            rejects += not out.verdict.accepted
            escalations += out.escalated
        emit(
            f"false_rejects/{threads}_threads",
            rejects,
            f"of {count} honest submissions ({escalations} escalated)",
            goal="== 0",
        )
    torch.set_num_threads(2)


def cost(
    model: torch.nn.Module, dataset: TokenDataset, name: str, *, steps: int, goal: str
) -> None:
    s = setting_for(make_task(name, steps=steps), model, dataset)
    train_s, spot_s, full_s = [], [], []
    for i in range(3):  # best of 3 CPU times each, interleaved: other jobs share the box
        t0 = time.process_time()
        result = train_with_trace(
            task=s.task, model=model, adapter_state=s.adapter, shard=s.shard, checkpoint_every=1
        )
        work = publish(s, result)
        train_s.append(time.process_time() - t0)
        root = trace_of(result, task_id=s.task.task_id, every=1).root  # on the ledger
        t0 = time.process_time()
        out = run_spot(s, work, i.to_bytes(4, "big"), root=root)
        spot_s.append(time.process_time() - t0)
        assert out.verdict.accepted and not out.escalated, out.verdict.reason
        t0 = time.process_time()
        full = verify(
            task=s.task,
            submitted=work.update,
            model=model,
            adapter_state=s.adapter,
            shard=s.shard,
            residual=None,
            executor_class=CPU_DET_V1,
        )
        full_s.append(time.process_time() - t0)
        assert full.accepted
    t = min(train_s)
    emit(
        "spot_over_train",
        round(min(spot_s), 4),
        f"s ({steps} steps, {DEFAULT_SPOT_PPM} ppm)",
        baseline=round(t, 4),
        goal=goal,
    )
    emit(
        "full_over_train",
        round(min(full_s), 4),
        f"s ({steps} steps)",
        baseline=round(t, 4),
        goal=None,
    )
    trace_bytes = len(work.trace or b"")
    emit(
        "trace_bytes",
        trace_bytes,
        f"bytes per submission ({steps} steps, every step)",
        baseline=len(work.update),
        goal=None,
    )


def full_cost_and_determinism(
    model: torch.nn.Module, tokenizer: Any, name: str, *, quick: bool, runs: int
) -> None:
    steps = 4 if quick else 16
    texts = build_domain_corpus()[:6]
    with tempfile.TemporaryDirectory() as tmp:
        path = build_dataset(texts, tokenizer, chunk_len=64, out_path=Path(tmp) / "d.r3tok")
        dataset = TokenDataset(path)
        task = dataclasses.replace(
            make_task(name, steps=steps, rnd=1),
            hyper=HyperParams(
                lr="0.005",
                steps=steps,
                batch_size=4,
                seq_len=64,
                rank=8,
                alpha=16,
                target_modules=("o_proj", "q_proj", "v_proj"),
            ),
        )
        shard = shard_of(dataset, shard_index=0, n_shards=4)
        build_submission(task=task, model=model, adapter_state=None, shard=shard, residual=None)
        train_s, verify_s = [], []
        for _ in range(3):
            t0 = time.process_time()
            sub = build_submission(
                task=task, model=model, adapter_state=None, shard=shard, residual=None
            )
            train_s.append(time.process_time() - t0)
            t0 = time.process_time()
            verdict = verify(
                task=task,
                submitted=sub.encoded,
                model=model,
                adapter_state=None,
                shard=shard,
                residual=None,
                executor_class=CPU_DET_V1,
            )
            verify_s.append(time.process_time() - t0)
            assert verdict.accepted, verdict.reason
        emit(
            "verify_over_train",
            round(min(verify_s), 4),
            "CPU s",
            baseline=round(min(train_s), 4),
            goal="<= 1.05",
        )
        if name == "tiny":
            return  # the child processes load the shipped model
        root = Path(__file__).resolve().parents[1]
        same = 0
        for n in range(runs):
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    "1" if n % 2 == 0 else "2",
                    encode_task(task).hex(),
                    str(path),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
                cwd=root,
            )
            same += out.stdout.strip().splitlines()[-1] == sub.digest
        emit(
            "determinism_rate",
            same / runs,
            f"fraction of {runs} fresh processes (1 and 2 threads)",
            goal=">= 1.0",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--runs", type=int, default=None, help="fresh-process re-runs")
    parser.add_argument("--seeds", type=int, default=10_000, help="spot seeds per cheat")
    parser.add_argument(
        "--honest", type=int, default=None, help="honest submissions per thread count"
    )
    parser.add_argument(
        "--only",
        choices=("all", "cost", "catalogue", "honest", "determinism"),
        default="all",
        help="run one group of figures (e.g. in parallel processes)",
    )
    args = parser.parse_args()
    if args.seeds < 1 or (args.runs is not None and args.runs < 1):
        parser.error("--seeds and --runs must be positive")
    torch.set_num_threads(2)
    if args.quick:
        from benchmarks.compression import ByteTokenizer
        from r3mes.model.tiny import make_tiny_model

        model: torch.nn.Module = make_tiny_model(0)
        tokenizer: Any = ByteTokenizer()
        name = "tiny"
    else:
        from benchmarks.compression import load_model

        model, tokenizer, name = load_model()
    steps = 64  # 7 sampled steps: fewer could not catch half-forged work 99 % of the time
    honest = args.honest or (10 if args.quick else 200)
    texts = build_domain_corpus()[:6]
    with tempfile.TemporaryDirectory() as tmp:
        path = build_dataset(texts, tokenizer, chunk_len=64, out_path=Path(tmp) / "c.r3tok")
        dataset = TokenDataset(path)
        if args.only in ("all", "cost"):
            # the tiny model's steps cost ~3 ms, so quick's ratio is mostly fixed overhead
            cost(model, dataset, name, steps=steps, goal="<= 0.3" if args.quick else "<= 0.15")
        if args.only in ("all", "catalogue"):
            catalogue(model, dataset, name, steps=steps, seeds=args.seeds)
        if args.only in ("all", "honest"):
            honest_population(model, dataset, name, count=honest, steps=8)
    if args.only in ("all", "determinism"):
        full_cost_and_determinism(
            model, tokenizer, name, quick=args.quick, runs=args.runs or (2 if args.quick else 10)
        )


if __name__ == "__main__":
    main()
