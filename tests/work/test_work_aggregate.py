from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from r3mes.work.aggregate import aggregate, aggregate_dense
from r3mes.work.compression import compress
from r3mes.work.data import TokenDataset, shard_of
from r3mes.work.encoding import DecodedUpdate, UpdateMeta, decode_update, encode_update, layout_of
from r3mes.work.errors import AggregationError
from r3mes.work.evaluate import heldout_loss
from r3mes.work.submission import build_submission
from r3mes.work.task import Task
from r3mes.work.training import initial_adapter_state, trained_layout
from r3mes.work.verify import verify


def _decoded(values: dict[str, torch.Tensor], tag: str) -> DecodedUpdate:
    sparse = compress(values, topk_ppm=1_000_000, value_format="fp16")
    meta = UpdateMeta(task_id=tag * 64, executor_class="cpu-fp32-det-v1", value_format="fp16")
    return decode_update(encode_update(sparse, meta), layout=layout_of(values))


def test_weighted_mean_is_added_to_the_adapter() -> None:
    adapter = {"a": torch.ones(2, 2), "b": torch.zeros(3)}
    u1 = _decoded({"a": torch.full((2, 2), 0.5), "b": torch.tensor([1.0, 0.0, -1.0])}, "1")
    u2 = _decoded({"a": torch.full((2, 2), -0.25), "b": torch.tensor([0.0, 2.0, 1.0])}, "2")
    new = aggregate(adapter, [(u1, 1), (u2, 3)])
    assert torch.allclose(new["a"], torch.full((2, 2), 1 + (0.5 - 0.75) / 4))
    assert torch.allclose(new["b"], torch.tensor([0.25, 1.5, 0.5]))
    assert new["a"].dtype == torch.float32
    assert torch.equal(adapter["a"], torch.ones(2, 2))  # input untouched


def test_aggregation_does_not_depend_on_list_order() -> None:
    gen = torch.Generator().manual_seed(0)
    adapter = {"w": torch.randn(16, 16, generator=gen)}
    ups = [(_decoded({"w": torch.randn(16, 16, generator=gen)}, str(i)), i + 1) for i in range(5)]
    a = aggregate(adapter, ups)
    b = aggregate(adapter, list(reversed(ups)))
    assert torch.equal(a["w"], b["w"])


def test_aggregation_rejects_bad_input() -> None:
    adapter = {"a": torch.ones(2)}
    u = _decoded({"a": torch.ones(2)}, "1")
    with pytest.raises(AggregationError, match="no updates"):
        aggregate(adapter, [])
    for w in (0, -1, True, 1.5):
        with pytest.raises(AggregationError, match="weights"):
            aggregate(adapter, [(u, w)])  # type: ignore[list-item]
    with pytest.raises(AggregationError):
        aggregate({"other": torch.ones(2)}, [(u, 1)])
    with pytest.raises(AggregationError, match="shape"):
        aggregate({"a": torch.ones(3)}, [(u, 1)])


@pytest.mark.slow
def test_a_round_of_three_miners_lowers_heldout_loss(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> None:
    hyper = {
        "lr": "0.02",
        "steps": 10,
        "target_modules": ("down_proj", "o_proj", "q_proj", "up_proj", "v_proj"),
    }
    base = make_task(round=0, n_shards=3, hyper=hyper)
    adapter = initial_adapter_state(tiny_model, base)
    accepted = []
    for i in range(3):
        task = dataclasses.replace(base, miner=f"remes1miner{i}", shard_index=i)
        shard = shard_of(domain_dataset, shard_index=i, n_shards=3)
        sub = build_submission(
            task=task, model=tiny_model, adapter_state=adapter, shard=shard, residual=None
        )
        verdict = verify(
            task=task,
            submitted=sub.encoded,
            model=tiny_model,
            adapter_state=adapter,
            shard=shard,
            residual=None,
            executor_class="cpu-fp32-det-v1",
        )
        assert verdict.accepted
        accepted.append((decode_update(sub.encoded, layout=trained_layout(adapter)), 1))
    new = aggregate(adapter, accepted)
    cfg = base.lora_config()
    before = heldout_loss(tiny_model, None, domain_dataset, max_chunks=64)
    with_genesis = heldout_loss(tiny_model, adapter, domain_dataset, max_chunks=64, lora_config=cfg)
    after = heldout_loss(tiny_model, new, domain_dataset, max_chunks=64, lora_config=cfg)
    assert with_genesis == pytest.approx(before, abs=1e-6)  # B = 0: the genesis adapter is a no-op
    assert after < before - 0.03


def test_dense_aggregation_rejects_malformed_input_with_clear_errors() -> None:
    adapter = {"a": torch.ones(2)}
    one = {"a": torch.ones(2)}
    cases = {
        "sum to": [(one, 2**62)] * 4,  # each weight allowed, the total is not
        "pair": [(one,)],
        "pairs": "not a list",
        "map tensor names": [([1, 2], 1)],
        "map tensor names to tensors": [({"a": [1.0, 2.0]}, 1)],
    }
    for match, updates in cases.items():
        with pytest.raises(AggregationError, match=match):
            aggregate_dense(adapter, updates)  # type: ignore[arg-type]
    with pytest.raises(AggregationError, match="adapter state"):
        aggregate_dense({"a": [1.0]}, [(one, 1)])  # type: ignore[dict-item]
    with pytest.raises(AggregationError, match="DecodedUpdate"):
        aggregate(adapter, [(one, 1)])  # type: ignore[list-item]
    # the largest allowed total still divides exactly
    half = aggregate_dense(adapter, [(one, 2**61), ({"a": torch.zeros(2)}, 2**61)])
    assert torch.equal(half["a"], torch.full((2,), 1.5))
