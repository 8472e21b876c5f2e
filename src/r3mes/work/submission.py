"""From a raw training delta to the bytes a miner submits (and a validator re-derives).

`encode_for_task` is the one function both sides call after training: it adds the carried
error-feedback residual, compresses with the task's keep ratio and value format, and encodes
with the task's identity and the executor class. For the seeded "sign" format the round seed
(`Task.seed`, shared by every miner of the round) picks the kept positions.

The executor class is never chosen by hand on the miner's side: `build_submission` derives it
from the device the work ran on (`current_executor_class`), so GPU work is labelled with its
own non-deterministic class and judged by distance, and `encode_for_task` refuses a
deterministic label for tensors that are not on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from r3mes.work.compression import SEEDED_FORMATS, compress_with_feedback
from r3mes.work.data import Shard
from r3mes.work.encoding import UpdateMeta, encode_update, update_digest
from r3mes.work.errors import TrainingError
from r3mes.work.executor import (
    Device,
    current_executor_class,
    is_deterministic_class,
    model_device,
)
from r3mes.work.task import Task
from r3mes.work.training import train_update

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Submission:
    """What a miner ships for a task, and the residual it keeps if the update is accepted."""

    encoded: bytes
    digest: str
    """SHA-256 (hex) of `encoded`."""
    next_residual: Tensors = field(repr=False)
    """Error-feedback residual for the miner's next round (only once this one is accepted)."""


def encode_for_task(
    *,
    task: Task,
    raw: Mapping[str, torch.Tensor],
    residual: Mapping[str, torch.Tensor] | None,
    executor_class: str,
) -> Submission:
    """Compress `raw + residual` for `task` and encode it canonically."""
    if is_deterministic_class(executor_class) and any(
        t.device.type != "cpu" for t in (*raw.values(), *(residual or {}).values())
    ):
        raise TrainingError(
            f"tensors off the CPU cannot be labelled {executor_class}; label them with "
            "current_executor_class(device) of the device they were computed on"
        )
    h = task.hyper
    seeded = h.value_format in SEEDED_FORMATS
    sparse, next_residual = compress_with_feedback(
        raw,
        residual,
        topk_ppm=h.topk_ppm,
        value_format=h.value_format,
        index_seed=task.seed if seeded else None,
    )
    meta = UpdateMeta(
        task_id=task.task_id,
        executor_class=executor_class,
        value_format=h.value_format,
        index_seed=task.seed if seeded else None,
        keep_ppm=h.topk_ppm if seeded else None,
    )
    encoded = encode_update(sparse, meta)
    return Submission(encoded, update_digest(encoded), next_residual)


def build_submission(
    *,
    task: Task,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    residual: Mapping[str, torch.Tensor] | None,
    device: Device | None = None,
) -> Submission:
    """Train `task` on `device` and encode the result: the miner's job.

    `device` None means wherever the model is. The update is labelled with that device's
    executor class: `cpu-fp32-det-v1` on the CPU, e.g. `cuda-9.0-nondet-v1` on an H100.
    """
    where = model_device(model) if device is None else device
    raw = train_update(
        task=task, model=model, adapter_state=adapter_state, shard=shard, device=where
    )
    return encode_for_task(
        task=task, raw=raw, residual=residual, executor_class=current_executor_class(where)
    )
