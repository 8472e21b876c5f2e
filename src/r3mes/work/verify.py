"""Verification by re-execution.

The validator decodes the submitted bytes, checks they are for THIS task (task id: the round,
the miner and the shard are all inside it) and THIS base model, re-runs the training and
re-derives the update with the miner's residual (which the validator replays from the miner's
accepted history; zeros in the first round). The update is decoded against the layout of the
adapter being trained (its B matrices), which the encoding references by digest.

* Same deterministic executor class on both sides: the digest must match exactly (a miner
  that used another error-feedback residual produces other bytes and fails here).
* Different classes (or a non-deterministic one): accepted when the relative L2 distance
  ``||submitted - expected|| / ||expected||`` of the decompressed updates is at most
  `CROSS_CLASS_TOLERANCE` (0.05). Honest fp32 training on other hardware lands far below it;
  a random, sign-flipped, 2x-scaled or other-shard update lands near or above 1. The price of
  tolerance: an update scaled by less than 5 % passes in this mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from r3mes.work.compression import check_same_layout, decompress
from r3mes.work.data import Shard
from r3mes.work.encoding import DecodedUpdate, decode_update
from r3mes.work.errors import CompressionError, EncodingError, TrainingError
from r3mes.work.executor import (
    Device,
    current_executor_class,
    is_deterministic_class,
    model_device,
)
from r3mes.work.submission import encode_for_task
from r3mes.work.task import Task
from r3mes.work.training import initial_adapter_state, train_update, trained_layout

log = logging.getLogger(__name__)

CROSS_CLASS_TOLERANCE = 0.05


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one submitted update."""

    accepted: bool
    reason: str
    distance: float
    """Relative L2 distance of the decompressed updates (inf when not computed)."""
    digest_match: bool
    next_residual: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    """The miner's residual after this round, as replayed here (set when accepted)."""


def relative_distance(
    submitted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> float:
    """||submitted - expected|| / ||expected|| over all tensors (float64, sorted keys)."""
    check_same_layout(expected, submitted, what="submitted update")
    diff = sum(
        float((submitted[k].double() - expected[k].double()).pow(2).sum()) for k in sorted(expected)
    )
    norm = sum(float(expected[k].double().pow(2).sum()) for k in sorted(expected))
    return math.sqrt(diff) / max(math.sqrt(norm), 1e-30)


def _reject(reason: str, *, distance: float = math.inf) -> Verdict:
    log.info("update rejected: %s", reason)
    return Verdict(False, reason, distance, False)


def _check_identity(task: Task, update: DecodedUpdate) -> str | None:
    meta = update.meta
    if meta.task_id != task.task_id:
        return (
            f"update is for task {meta.task_id[:16]}..., not {task.task_id[:16]}... "
            "(another round, miner, shard or base model)"
        )
    if meta.value_format != task.hyper.value_format:
        return f"update uses value format {meta.value_format}, the task {task.hyper.value_format}"
    if meta.index_seed is not None and (meta.index_seed, meta.keep_ppm) != (
        task.seed,
        task.hyper.topk_ppm,
    ):
        return "update keeps positions another index seed or keep ratio picks, not the task's"
    return None


def verify(
    *,
    task: Task,
    submitted: bytes,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    residual: Mapping[str, torch.Tensor] | None,
    executor_class: str,
    device: Device | None = None,
) -> Verdict:
    """Re-execute `task` on `device` and judge `submitted` (see module docstring).

    `executor_class` is the class of this validator's re-execution and must be
    `current_executor_class(device)`; `device` None means wherever the model is. `residual` is
    the miner's replayed error-feedback residual (None in its first round). Bytes that do not
    decode, or decode to an update for another task or layout, are rejected, never raised.
    """
    where = model_device(model) if device is None else device
    if executor_class != current_executor_class(where):
        raise TrainingError(
            f"this validator re-executes on {where}, whose class is "
            f"{current_executor_class(where)}, not {executor_class!r}"
        )
    start = adapter_state if adapter_state is not None else initial_adapter_state(model, task)
    try:
        update = decode_update(submitted, layout=trained_layout(start))
    except (EncodingError, CompressionError) as exc:
        return _reject(f"malformed update: {exc}")
    problem = _check_identity(task, update)
    if problem:
        return _reject(problem)
    raw = train_update(task=task, model=model, adapter_state=start, shard=shard, device=where)
    try:
        expected = encode_for_task(
            task=task, raw=raw, residual=residual, executor_class=update.meta.executor_class
        )
        # identical bytes decode to identical tensors: skip the dense comparison
        distance = (
            0.0
            if expected.digest == update.digest
            else relative_distance(
                update.dense(),
                decompress(decode_update(expected.encoded, layout=trained_layout(start)).tensors),
            )
        )
    except CompressionError as exc:
        return _reject(f"update does not fit the task's adapter: {exc}")
    exact = update.meta.executor_class == executor_class and is_deterministic_class(executor_class)
    if exact:
        if expected.digest != update.digest:
            return _reject(
                "digest differs from the re-executed update (other training result or "
                "error-feedback residual)",
                distance=distance,
            )
        return Verdict(True, "digest matches re-execution", distance, True, expected.next_residual)
    if distance > CROSS_CLASS_TOLERANCE:
        return _reject(
            f"relative distance {distance:.4f} exceeds {CROSS_CLASS_TOLERANCE} "
            f"({update.meta.executor_class} vs {executor_class})",
            distance=distance,
        )
    return Verdict(
        True,
        f"within tolerance across executor classes ({distance:.4f})",
        distance,
        expected.digest == update.digest,
        expected.next_residual,
    )
