"""Fuzz the work protocol's decoders: canonical tensors, updates and tasks."""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from hypothesis import strategies as st

from fuzz.harness import fuzz
from fuzz.mutations import INTERESTING_VALUES, mutated
from r3mes.work.canonical import dump_canonical, load_canonical
from r3mes.work.compression import compress
from r3mes.work.encoding import UpdateMeta, decode_update, encode_update, layout_of
from r3mes.work.errors import WorkError
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.task import HyperParams, Task, decode_task, encode_task

GEN = torch.Generator().manual_seed(0)
RAW = {
    "x.lora_A.weight": torch.randn(4, 16, generator=GEN),
    "x.lora_B.weight": torch.randn(16, 4, generator=GEN),
}
LAYOUT = layout_of(RAW)


def _updates() -> list[bytes]:
    out = []
    for value_format, ppm in (("fp16", 100_000), ("int8", 50_000), ("fp16", 1_000_000)):
        meta = UpdateMeta(task_id="ab" * 32, executor_class=CPU_DET_V1, value_format=value_format)
        out.append(encode_update(compress(RAW, topk_ppm=ppm, value_format=value_format), meta))
    for seed, ppm in ((7, 100_000), (2**64 - 1, 1_000_000), (0, 1)):  # v3: seeded signs
        sparse = compress(RAW, topk_ppm=ppm, value_format="sign", index_seed=seed)
        meta = UpdateMeta("ab" * 32, CPU_DET_V1, "sign", index_seed=seed, keep_ppm=ppm)
        out.append(encode_update(sparse, meta))
    return out


def _canonical_seeds() -> list[bytes]:
    return [
        dump_canonical(RAW, {"step": "3"}),
        dump_canonical({"a": torch.arange(6, dtype=torch.int64).reshape(2, 3)}, {}),
        dump_canonical({"e": torch.zeros(0, 4), "u": torch.ones(3, dtype=torch.uint8)}, {}),
        dump_canonical({"z": torch.zeros([1] * 8, dtype=torch.int8)}, {"k": "v"}),
        *_updates(),
    ]


@st.composite
def safetensors_headers(draw: st.DrawFn) -> bytes:
    """Well-framed files whose header entries take interesting dtypes, shapes and offsets."""
    dims = st.one_of(st.integers(0, 8), st.sampled_from([2**31, 2**47, 2**48, 2**64, -1]))
    entry: dict[str, Any] = {
        "dtype": draw(st.sampled_from(["F32", "F16", "I8", "U8", "I32", "I64", "BF16", 3])),
        "shape": draw(st.one_of(st.lists(dims, max_size=70), st.sampled_from(INTERESTING_VALUES))),
    }
    body = draw(st.binary(max_size=256))
    offsets = st.lists(st.integers(-1, 300), min_size=0, max_size=3)
    entry["data_offsets"] = draw(st.one_of(st.just([0, len(body)]), offsets))
    header: dict[str, Any] = {"__metadata__": draw(st.sampled_from([{}, {"k": "v"}, {"k": 1}]))}
    header[draw(st.sampled_from(["x", "values", "indices", "__metadata__"]))] = entry
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + body


def test_load_canonical() -> None:
    fuzz("load_canonical", mutated(_canonical_seeds()), load_canonical, (WorkError,))


def test_load_canonical_crafted_headers() -> None:
    fuzz("load_canonical/headers", safetensors_headers(), load_canonical, (WorkError,))


def test_decode_update() -> None:
    def decode(data: bytes) -> object:
        return decode_update(data, layout=LAYOUT)

    fuzz("decode_update", mutated(_updates()), decode, (WorkError,))


def test_decode_task() -> None:
    hyper = HyperParams(lr="0.01", steps=4, batch_size=4, seq_len=32, rank=4, alpha=8)
    task = Task(
        round=3,
        seed=123456789,
        miner="remes1miner0",
        base_model_cid="bafybase",
        adapter_cid="bafyadapter",
        dataset_cid="bafydataset",
        shard_index=0,
        n_shards=4,
        hyper=hyper,
        executor_class=CPU_DET_V1,
    )
    fuzz("decode_task", mutated([encode_task(task)]), decode_task, (WorkError,))
