from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r3mes.work.errors import TaskError, WorkError
from r3mes.work.task import HyperParams, Task, decode_task, encode_task


def test_round_trip_and_task_id_is_sha256_of_canonical_bytes(
    make_task: Callable[..., Task],
) -> None:
    import hashlib

    task = make_task()
    data = encode_task(task)
    assert decode_task(data) == task
    assert task.task_id == hashlib.sha256(data).hexdigest()
    assert b" " not in data and b'"v":1' in data
    assert json.loads(data)["hyper"]["lr"] == "0.01"  # no floats in the encoding


def test_task_id_changes_with_every_field(make_task: Callable[..., Task]) -> None:
    base = make_task()
    variants = [
        make_task(round=4),
        make_task(seed=1),
        make_task(miner="remes1other"),
        make_task(base_model_cid="bafyother"),
        make_task(shard_index=1),
        make_task(hyper={"lr": "0.02"}),
        make_task(hyper={"topk_ppm": 1000}),
        make_task(executor_class="cuda-8.0-nondet-v1"),
    ]
    ids = {t.task_id for t in variants}
    assert base.task_id not in ids and len(ids) == len(variants)


def _mutate(data: bytes, fn: Callable[[Any], object]) -> bytes:
    obj = json.loads(data)
    fn(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "mutation",
    [
        lambda o: o.__setitem__("v", 2),
        lambda o: o.__setitem__("extra", 1),
        lambda o: o.pop("miner"),
        lambda o: o.__setitem__("round", True),
        lambda o: o.__setitem__("round", -1),
        lambda o: o.__setitem__("seed", "007"),
        lambda o: o.__setitem__("seed", 7),
        lambda o: o["hyper"].__setitem__("lr", "0.010"),
        lambda o: o["hyper"].__setitem__("lr", "1e-3"),
        lambda o: o["hyper"].__setitem__("target_modules", ["v_proj", "q_proj"]),
        lambda o: o["hyper"].__setitem__("target_modules", ["bogus"]),
        lambda o: o["hyper"].__setitem__("target_modules", [["q_proj"]]),
        lambda o: o["hyper"].__setitem__("target_modules", [{"q": 1}, "v_proj"]),
        lambda o: o.__setitem__("seed", "\u00b9"),
        lambda o: o.__setitem__("seed", "\u0661"),
        lambda o: o.__setitem__("seed", "12\n"),
        lambda o: o.__setitem__("miner", "remes1miner0\n"),
        lambda o: o["hyper"].__setitem__("topk_ppm", 0),
        lambda o: o.__setitem__("shard_index", 4),
        lambda o: o.__setitem__("miner", "has space"),
    ],
)
def test_decode_rejects_malformed_fields(
    make_task: Callable[..., Task], mutation: Callable[[Any], object]
) -> None:
    with pytest.raises(TaskError):
        decode_task(_mutate(encode_task(make_task()), mutation))


def test_decode_rejects_non_canonical_and_garbage(make_task: Callable[..., Task]) -> None:
    data = encode_task(make_task())
    spaced = json.dumps(json.loads(data), sort_keys=True).encode()
    reversed_keys = dict(reversed(list(json.loads(data).items())))
    unsorted = json.dumps(reversed_keys, separators=(",", ":")).encode()
    assert unsorted != data
    with_float = data.replace(b'"alpha":8', b'"alpha":8.0')
    for bad in (spaced, unsorted, with_float, data[:-1], b"\xff\xfe", b"[]", b"x" * 5000):
        with pytest.raises(WorkError):
            decode_task(bad)


def test_hyperparams_validate() -> None:
    with pytest.raises(TaskError, match="lr"):
        HyperParams(lr="0")
    with pytest.raises(TaskError, match="target_modules"):
        HyperParams(target_modules=("v_proj", "v_proj"))
    with pytest.raises(TaskError, match="value_format"):
        HyperParams(value_format="fp8")
    assert HyperParams(lr="0.25").lr_float == 0.25
    assert HyperParams(topk_ppm=10_000).topk_ratio == 0.01


@given(
    round_=st.integers(0, 2**63 - 1),
    seed=st.integers(0, 2**64 - 1),
    n_shards=st.integers(1, 1000),
    data=st.data(),
    lr=st.from_regex(r"\A(0\.[0-9]{0,5}[1-9]|[1-9])\Z"),
)
def test_round_trip_property(
    round_: int, seed: int, n_shards: int, data: st.DataObject, lr: str
) -> None:
    task = Task(
        round=round_,
        seed=seed,
        miner="remes1x",
        base_model_cid="b",
        adapter_cid="a",
        dataset_cid="d",
        shard_index=data.draw(st.integers(0, n_shards - 1)),
        n_shards=n_shards,
        hyper=HyperParams(lr=lr),
        executor_class="cpu-fp32-det-v1",
    )
    assert decode_task(encode_task(task)) == task


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 2000 + b"]" * 2000,
        b"{" * 3000,
        b'{"":' * 800 + b"1" + b"}" * 800,
        b'{"v":1,"hyper":{"target_modules":[["q_proj"]]}}',
    ],
    ids=["lists", "open", "objects", "four-levels"],
)
def test_deep_nesting_is_a_task_error_not_a_recursion_error(data: bytes) -> None:
    with pytest.raises(TaskError, match="nests|keys"):
        decode_task(data)


def test_superscript_seed_is_a_task_error(make_task: Callable[..., Task]) -> None:
    data = encode_task(make_task()).replace(b'"seed":"123456789"', b'"seed":"\\u00b9"')
    assert b"u00b9" in data
    with pytest.raises(TaskError, match="seed"):
        decode_task(data)


def test_hyper_params_reject_unhashable_targets() -> None:
    with pytest.raises(TaskError, match="target_modules"):
        HyperParams(target_modules=(["q_proj"],))  # type: ignore[arg-type]
