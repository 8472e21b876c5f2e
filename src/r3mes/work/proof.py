"""Cheaper checks for scale: spot-checking training steps and narrowing disputes.

Proof-of-Learning idea. Training emits the digest of its full state (LoRA weights and Adam
moments, `TrainState.digest`) after every step: ``digests[0]`` is the start, ``digests[i]`` the
state after i steps. The miner commits to `merkle_root(digests)` and keeps checkpoints. A
validator then picks random step indices i, asks for the checkpoint after i steps
(`TrainState.encode` bytes), checks it hashes to ``digests[i]``, runs ONE step and compares with
``digests[i + 1]`` (`verify_steps`). Each state depends on the previous, so two digest lists
that diverge stay diverged; `first_divergence` finds the first differing step by bisection
(O(log n) digest comparisons, e.g. across an interactive dispute). Full re-execution
(`r3mes.work.verify`) stays the default; these checks are for when it is too expensive.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from r3mes.spec import bisection as spec_bisection
from r3mes.work.canonical import load_canonical
from r3mes.work.data import Shard
from r3mes.work.errors import EncodingError, WorkError
from r3mes.work.task import Task
from r3mes.work.training import (
    TrainState,
    initial_adapter_state,
    run_steps,
    start_state,
    train_state_problem,
)

_CANONICAL_UINT = re.compile(r"0|[1-9][0-9]{0,18}")
_PARTS = ("param/", "exp_avg/", "exp_avg_sq/")


def merkle_root(digests: Sequence[str]) -> str:
    """Merkle root (hex) over hex digests: leaf = H(0x00 || d), node = H(0x01 || l || r).

    An odd node at the end of a level is promoted unchanged. The one definition lives in
    `r3mes.spec.bisection` (the ledger checks proofs against it); errors become `WorkError`.
    """
    try:
        return spec_bisection.merkle_root(digests)
    except spec_bisection.BisectionError as exc:
        raise WorkError(str(exc)) from exc


def first_divergence(a_digests: Sequence[str], b_digests: Sequence[str]) -> int | None:
    """First index where the lists differ (bisection), or None when they are identical.

    Assumes the chained property (equal at i implies equal before i); a list that is a strict
    prefix of the other diverges at its length.
    """
    n = min(len(a_digests), len(b_digests))
    lo, hi = 0, n  # the first differing index among the first n lies in [lo, hi], n = none
    while lo < hi:
        mid = (lo + hi) // 2
        if a_digests[mid] == b_digests[mid]:
            lo = mid + 1
        else:
            hi = mid
    if lo < n:
        return lo
    return None if len(a_digests) == len(b_digests) else n


def decode_train_state(data: bytes, *, max_bytes: int = 256 << 20) -> TrainState:
    """Strictly decode `TrainState.encode()` bytes (a committed checkpoint)."""
    tensors, metadata = load_canonical(data, max_bytes=max_bytes)
    step = metadata.get("step", "")
    if set(metadata) != {"step"} or not _CANONICAL_UINT.fullmatch(step):
        raise EncodingError("checkpoint metadata must be exactly a canonical decimal 'step'")
    groups: list[dict[str, torch.Tensor]] = [{}, {}, {}]
    for name, t in tensors.items():
        for i, prefix in enumerate(_PARTS):
            if name.startswith(prefix):
                groups[i][name[len(prefix) :]] = t
                break
        else:
            raise EncodingError(f"checkpoint holds an unexpected tensor {name!r}")
    params, m, v = ({k: g[k] for k in sorted(g)} for g in groups)
    state = TrainState(int(step), params, m, v)
    problem = train_state_problem(state)
    if problem:
        raise EncodingError(f"checkpoint is not a training state: {problem}")
    return state


def _fits(ckpt: TrainState, start: TrainState) -> bool:
    """True when `ckpt` is a well-formed state over the same B weights as `start`."""
    if train_state_problem(ckpt) is not None or set(ckpt.params) != set(start.params):
        return False
    return all(ckpt.params[k].shape == start.params[k].shape for k in start.params)


@dataclass(frozen=True)
class StepCheck:
    """The outcome of spot-checking training steps."""

    ok: bool
    failed: tuple[int, ...]
    """Step indices whose checkpoint or re-executed next state did not match."""
    reason: str


def verify_steps(
    *,
    task: Task,
    model: nn.Module,
    shard: Shard,
    adapter_state: Mapping[str, torch.Tensor] | None,
    step_digests: Sequence[str],
    checkpoints: Mapping[int, TrainState],
    indices: Sequence[int],
) -> StepCheck:
    """Re-execute step i -> i+1 from each checkpoint i in `indices` against `step_digests`.

    `adapter_state` is the adapter version the task starts from (None: genesis); checkpoints
    hold the B weights and Adam moments (`TrainState`).
    """
    steps = task.hyper.steps
    if adapter_state is None:
        adapter_state = initial_adapter_state(model, task)
    if len(step_digests) != steps + 1:
        return StepCheck(False, (), f"expected {steps + 1} step digests, got {len(step_digests)}")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < steps:
            raise WorkError(f"step indices must be integers in [0, {steps}), got {i!r}")
    start = start_state(adapter_state)
    failed: list[int] = []
    for i in sorted(set(indices)):
        ckpt = checkpoints.get(i)
        if (
            not isinstance(ckpt, TrainState)
            or ckpt.step != i
            or not _fits(ckpt, start)
            or ckpt.digest() != step_digests[i]
        ):
            failed.append(i)
            continue
        state, _, _ = run_steps(
            task=task, model=model, shard=shard, adapter_state=adapter_state, start=ckpt, stop=i + 1
        )
        if state.digest() != step_digests[i + 1]:
            failed.append(i)
    if failed:
        return StepCheck(False, tuple(failed), f"steps {failed} do not reproduce")
    return StepCheck(True, (), f"{len(set(indices))} steps reproduce")
