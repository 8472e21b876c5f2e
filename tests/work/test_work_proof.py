from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from r3mes.work.data import Shard, TokenDataset, shard_of
from r3mes.work.errors import EncodingError, WorkError
from r3mes.work.proof import decode_train_state, first_divergence, merkle_root, verify_steps
from r3mes.work.task import Task
from r3mes.work.training import TrainResult, TrainState, train_with_trace


def _h(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_merkle_root_commits_to_every_digest() -> None:
    ds = [_h(i) for i in range(5)]
    root = merkle_root(ds)
    assert root == merkle_root(list(ds))
    assert all(merkle_root(ds[:i] + [_h(99)] + ds[i + 1 :]) != root for i in range(5))
    assert merkle_root(ds[:4]) != root
    assert merkle_root([ds[0]]) == hashlib.sha256(b"\x00" + bytes.fromhex(ds[0])).hexdigest()
    with pytest.raises(WorkError):
        merkle_root([])
    with pytest.raises(WorkError):
        merkle_root(["nothex"])


@given(n=st.integers(0, 200), data=st.data())
def test_first_divergence_finds_the_first_differing_step(n: int, data: st.DataObject) -> None:
    a = [_h(i) for i in range(n)]
    assert first_divergence(a, list(a)) is None
    if n:
        k = data.draw(st.integers(0, n - 1))
        b = a[:k] + [_h(10_000 + i) for i in range(k, n)]  # chained: diverged stays diverged
        assert first_divergence(a, b) == k
    assert first_divergence(a, a + [_h(-1)]) == n


@pytest.fixture
def trace(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> tuple[Task, Shard, TrainResult]:
    task = make_task(hyper={"steps": 6})
    shard = shard_of(domain_dataset, shard_index=task.shard_index, n_shards=task.n_shards)
    result = train_with_trace(
        task=task, model=tiny_model, adapter_state=None, shard=shard, checkpoint_every=1
    )
    return task, shard, result


def test_honest_steps_verify(
    trace: tuple[Task, Shard, TrainResult], tiny_model: torch.nn.Module
) -> None:
    task, shard, result = trace
    ckpts = {i: decode_train_state(s.encode()) for i, s in result.checkpoints.items()}
    check = verify_steps(
        task=task,
        model=tiny_model,
        shard=shard,
        adapter_state=None,
        step_digests=result.step_digests,
        checkpoints=ckpts,
        indices=[0, 3, 5],
    )
    assert check.ok, check.reason


def test_forged_steps_are_caught(
    trace: tuple[Task, Shard, TrainResult], tiny_model: torch.nn.Module
) -> None:
    task, shard, result = trace
    digests = list(result.step_digests)
    digests[4] = _h(4)  # a fake state after step 4
    check = verify_steps(
        task=task,
        model=tiny_model,
        shard=shard,
        adapter_state=None,
        step_digests=digests,
        checkpoints=result.checkpoints,
        indices=[1, 3, 4],
    )
    assert not check.ok and check.failed == (3, 4)
    tampered = dict(result.checkpoints)
    s = tampered[2]
    tampered[2] = dataclasses.replace(s, params={k: v + 1e-6 for k, v in s.params.items()})
    check = verify_steps(
        task=task,
        model=tiny_model,
        shard=shard,
        adapter_state=None,
        step_digests=result.step_digests,
        checkpoints=tampered,
        indices=[2],
    )
    assert check.failed == (2,)
    missing = verify_steps(
        task=task,
        model=tiny_model,
        shard=shard,
        adapter_state=None,
        step_digests=result.step_digests,
        checkpoints={},
        indices=[0],
    )
    assert missing.failed == (0,)
    with pytest.raises(WorkError):
        verify_steps(
            task=task,
            model=tiny_model,
            shard=shard,
            adapter_state=None,
            step_digests=result.step_digests,
            checkpoints={},
            indices=[6],
        )
    short = verify_steps(
        task=task,
        model=tiny_model,
        shard=shard,
        adapter_state=None,
        step_digests=result.step_digests[:-1],
        checkpoints={},
        indices=[],
    )
    assert not short.ok


def test_checkpoint_decoding_is_strict(trace: tuple[Task, Shard, TrainResult]) -> None:
    _, _, result = trace
    data = result.checkpoints[1].encode()
    state = decode_train_state(data)
    assert state.step == 1 and state.digest() == result.step_digests[1]
    with pytest.raises(EncodingError):
        decode_train_state(data[:-2])
    from r3mes.work.canonical import dump_canonical

    with pytest.raises(EncodingError):
        decode_train_state(dump_canonical({"param/x": torch.ones(1)}, {"step": "01"}))
    with pytest.raises(EncodingError):
        decode_train_state(dump_canonical({"junk": torch.ones(1)}, {"step": "1"}))


def _state_bytes(state: TrainState, **edits: Any) -> bytes:
    from r3mes.work.canonical import dump_canonical

    tensors = {f"param/{k}": v for k, v in state.params.items()}
    tensors |= {f"exp_avg/{k}": v for k, v in state.exp_avg.items()}
    tensors |= {f"exp_avg_sq/{k}": v for k, v in state.exp_avg_sq.items()}
    metadata = {"step": str(state.step)}
    for name, value in edits.items():
        if name == "step":
            metadata["step"] = value
        else:
            tensors[name] = value
    return dump_canonical(tensors, metadata)


def test_checkpoint_with_non_ascii_step_is_rejected(trace: tuple[Task, Shard, TrainResult]) -> None:
    _, _, result = trace
    state = result.checkpoints[1]
    for step in ("\u00b9", "\u0661", "1\n", "-1", "", "99999999999999999999999"):
        with pytest.raises(EncodingError, match="step"):
            decode_train_state(_state_bytes(state, step=step))


def test_checkpoint_moments_must_match_param_shape_and_dtype(
    trace: tuple[Task, Shard, TrainResult],
) -> None:
    _, _, result = trace
    state = result.checkpoints[1]
    key = sorted(state.params)[0]
    shape = tuple(state.params[key].shape)
    bad = {
        "moment shape": {f"exp_avg/{key}": torch.zeros(shape[0] + 1, *shape[1:])},
        "moment dtype": {f"exp_avg_sq/{key}": torch.zeros(shape, dtype=torch.float16)},
        "param dtype": {f"param/{key}": torch.zeros(shape, dtype=torch.int32)},
    }
    for label, edit in bad.items():
        with pytest.raises(EncodingError, match="shape|float32") as info:
            decode_train_state(_state_bytes(state, **edit))
        assert key in str(info.value), label


def test_verify_steps_fails_a_committed_checkpoint_of_the_wrong_shape(
    trace: tuple[Task, Shard, TrainResult], tiny_model: torch.nn.Module
) -> None:
    """A miner that commits to a malformed state fails that step; nothing is raised."""
    task, shard, result = trace
    state = result.checkpoints[2]
    key = sorted(state.params)[0]
    wrong = dict(state.exp_avg)
    wrong[key] = torch.zeros(3)
    forged = dataclasses.replace(state, exp_avg=wrong)
    digests = list(result.step_digests)
    digests[2] = forged.digest()  # the miner committed to the malformed state itself
    check = verify_steps(
        task=task,
        model=tiny_model,
        shard=shard,
        adapter_state=None,
        step_digests=digests,
        checkpoints={**result.checkpoints, 2: forged},
        indices=[2],
    )
    assert not check.ok and check.failed == (2,)
    for index in ("1", 1.0, True):
        with pytest.raises(WorkError, match="step indices"):
            verify_steps(
                task=task,
                model=tiny_model,
                shard=shard,
                adapter_state=None,
                step_digests=result.step_digests,
                checkpoints=result.checkpoints,
                indices=[index],  # type: ignore[list-item]
            )
