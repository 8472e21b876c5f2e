"""From a raw training delta to the bytes a miner submits (and a validator re-derives).

`encode_for_task` is the one function both sides call after training: it adds the carried
error-feedback residual, compresses with the task's top-k ratio and value format, and encodes
with the task's identity and the executor class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from r3mes.work.compression import compress_with_feedback
from r3mes.work.data import Shard
from r3mes.work.encoding import UpdateMeta, encode_update, update_digest
from r3mes.work.executor import CPU_DET_V1
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
    h = task.hyper
    sparse, next_residual = compress_with_feedback(
        raw, residual, topk_ppm=h.topk_ppm, value_format=h.value_format
    )
    meta = UpdateMeta(
        task_id=task.task_id, executor_class=executor_class, value_format=h.value_format
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
) -> Submission:
    """Train `task` (executor class `cpu-fp32-det-v1`) and encode the result: the miner's job."""
    raw = train_update(task=task, model=model, adapter_state=adapter_state, shard=shard)
    return encode_for_task(task=task, raw=raw, residual=residual, executor_class=CPU_DET_V1)
