"""Held-out evaluation and the contribution score of one update.

Loss is the mean next-token cross-entropy (nats per predicted token) over the first
`max_chunks` held-out chunks of a dataset (`TokenDataset.heldout_indices`), in batches of
`EVAL_BATCH`, under `deterministic_cpu()` so every validator computes the same number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from r3mes.work.data import TokenDataset
from r3mes.work.encoding import DecodedUpdate
from r3mes.work.errors import DatasetError, TrainingError
from r3mes.work.executor import deterministic_cpu
from r3mes.work.training import borrowed_adapter

if TYPE_CHECKING:
    from r3mes.model.lora import LoraConfig

EVAL_BATCH = 8


def heldout_loss(
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    dataset: TokenDataset,
    *,
    max_chunks: int,
    lora_config: LoraConfig | None = None,
) -> float:
    """Mean held-out next-token loss of the model (with `adapter_state` if given)."""
    if adapter_state is not None and lora_config is None:
        raise TrainingError("heldout_loss needs lora_config to apply an adapter state")
    indices = [int(i) for i in dataset.heldout_indices()[:max_chunks]]
    if max_chunks < 1 or not indices:
        raise DatasetError(
            f"no held-out chunks to evaluate (dataset has {len(dataset)} chunks, "
            f"max_chunks={max_chunks}); build a dataset with at least 10 chunks"
        )
    adapter = (
        borrowed_adapter(model, lora_config, adapter_state)
        if adapter_state is not None and lora_config is not None
        else nullcontext()
    )
    total, count = 0.0, 0
    with deterministic_cpu(), adapter, torch.no_grad():
        for start in range(0, len(indices), EVAL_BATCH):
            batch = torch.from_numpy(dataset.chunks(indices[start : start + EVAL_BATCH]))
            logits = model(batch)  # (B, T, V)
            vocab = logits.shape[-1]
            losses = F.cross_entropy(
                logits[:, :-1].reshape(-1, vocab), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(losses)
            count += batch[:, 1:].numel()
    return total / count


def perplexity(loss: float) -> float:
    """exp(loss): the perplexity of a mean next-token loss in nats."""
    return math.exp(loss)


def apply_update(
    adapter_state: Mapping[str, torch.Tensor], update: DecodedUpdate
) -> dict[str, torch.Tensor]:
    """`adapter_state` plus one decompressed update (what a single miner's work would give)."""
    dense = update.dense()
    if not set(dense) <= set(adapter_state):
        raise TrainingError("the update holds tensors the adapter state lacks")
    zero = torch.zeros(())
    return {
        k: adapter_state[k].to(torch.float32) + dense.get(k, zero) for k in sorted(adapter_state)
    }


def contribution_score(
    *,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor],
    update: DecodedUpdate,
    dataset: TokenDataset,
    lora_config: LoraConfig,
    max_chunks: int,
) -> float:
    """Held-out loss improvement (before - after, nats) from adding `update` to the adapter."""
    before = heldout_loss(
        model, adapter_state, dataset, max_chunks=max_chunks, lora_config=lora_config
    )
    after = heldout_loss(
        model,
        apply_update(adapter_state, update),
        dataset,
        max_chunks=max_chunks,
        lora_config=lora_config,
    )
    return before - after
