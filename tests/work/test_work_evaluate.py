from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from r3mes.work.data import TokenDataset, shard_of
from r3mes.work.encoding import decode_update
from r3mes.work.errors import DatasetError, TrainingError
from r3mes.work.evaluate import apply_update, contribution_score, heldout_loss, perplexity
from r3mes.work.submission import build_submission
from r3mes.work.task import Task
from r3mes.work.training import initial_adapter_state, trained_layout


def test_heldout_loss_is_deterministic_and_near_uniform_for_a_random_model(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module
) -> None:
    a = heldout_loss(tiny_model, None, domain_dataset, max_chunks=16)
    b = heldout_loss(tiny_model, None, domain_dataset, max_chunks=16)
    assert a == b
    assert abs(a - math.log(256)) < 0.5
    assert perplexity(a) == pytest.approx(math.exp(a))


def test_heldout_loss_rejects_bad_requests(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    with pytest.raises(DatasetError):
        heldout_loss(tiny_model, None, domain_dataset, max_chunks=0)
    adapter = initial_adapter_state(tiny_model, make_task())
    with pytest.raises(TrainingError, match="lora_config"):
        heldout_loss(tiny_model, adapter, domain_dataset, max_chunks=4)


def test_contribution_score_rewards_useful_updates(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    task = make_task(hyper={"lr": "0.05", "steps": 8})
    adapter = initial_adapter_state(tiny_model, task)
    shard = shard_of(domain_dataset, shard_index=task.shard_index, n_shards=task.n_shards)
    sub = build_submission(
        task=task, model=tiny_model, adapter_state=adapter, shard=shard, residual=None
    )
    update = decode_update(sub.encoded, layout=trained_layout(adapter))
    score = contribution_score(
        model=tiny_model,
        adapter_state=adapter,
        update=update,
        dataset=domain_dataset,
        lora_config=task.lora_config(),
        max_chunks=32,
    )
    assert score > 0
    with pytest.raises(TrainingError):
        apply_update({"x": adapter[next(iter(adapter))]}, update)
