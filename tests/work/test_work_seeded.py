"""The seeded sign format (update format v3): positions from the round seed, one bit each."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import struct
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch

from r3mes.work.compression import (
    compress,
    compress_with_feedback,
    seeded_positions,
    topk_count,
)
from r3mes.work.data import TokenDataset, shard_of
from r3mes.work.encoding import (
    SEEDED_MAGIC,
    UpdateMeta,
    decode_update,
    encode_update,
    layout_of,
)
from r3mes.work.errors import CompressionError, EncodingError
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.submission import build_submission, encode_for_task
from r3mes.work.task import Task
from r3mes.work.training import train_update
from r3mes.work.verify import verify

SEED = 987654321
PPM = 60_000
TASK_ID = "cd" * 32


def _raw(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "a.lora_B.weight": torch.randn(64, 8, generator=gen) * 1e-3,
        "b.lora_B.weight": torch.randn(32, 8, generator=gen) * 1e-3,
        "c.lora_B.weight": torch.randn(96, 8, generator=gen) * 1e-3,
    }


LAYOUT = layout_of(_raw())
TOTAL_KEPT = sum(topk_count(math.prod(s), PPM) for s in LAYOUT.values())


def _meta(seed: int = SEED, ppm: int = PPM) -> UpdateMeta:
    return UpdateMeta(TASK_ID, CPU_DET_V1, "sign", index_seed=seed, keep_ppm=ppm)


def _update(raw: dict[str, torch.Tensor] | None = None, seed: int = SEED) -> bytes:
    sparse = compress(raw or _raw(), topk_ppm=PPM, value_format="sign", index_seed=seed)
    return encode_update(sparse, _meta(seed))


def test_round_trip_is_canonical_and_carries_no_indices() -> None:
    raw = _raw()
    data = _update(raw)
    assert data[:4] == SEEDED_MAGIC
    header = 4 + 1 + 32 + 1 + len(CPU_DET_V1) + 8 + 4
    assert len(data) == header + 2 * len(LAYOUT) + math.ceil(TOTAL_KEPT / 8)
    dec = decode_update(data, layout=LAYOUT)
    assert dec.meta == _meta()
    assert encode_update(dec.tensors, dec.meta) == data
    offset = 0
    for key in sorted(raw):
        st, flat = dec.tensors[key], raw[key].reshape(-1)
        want = seeded_positions(seed=SEED, offset=offset, numel=flat.numel(), keep_ppm=PPM)
        offset += flat.numel()
        assert st.indices.tolist() == want.tolist()
        kept = flat[torch.from_numpy(want)]
        assert torch.equal(st.values, torch.where(kept < 0, -1, 1).to(torch.int8))
        mean_abs = math.fsum(abs(v) for v in kept.tolist()) / kept.numel()
        assert float(st.scale) == float(np.float16(mean_abs)) > 0  # type: ignore[arg-type]
        dense = dec.dense()[key].reshape(-1)
        assert int((dense != 0).sum()) == want.size


def test_every_miner_of_a_round_keeps_the_same_positions() -> None:
    one = decode_update(_update(_raw(1)), layout=LAYOUT)
    two = decode_update(_update(_raw(2)), layout=LAYOUT)
    other_round = decode_update(_update(_raw(1), seed=SEED + 1), layout=LAYOUT)
    for key in LAYOUT:
        assert torch.equal(one.tensors[key].indices, two.tensors[key].indices)
        assert not torch.equal(one.tensors[key].indices, other_round.tensors[key].indices)


def test_seeded_positions_are_pinned() -> None:
    """Consensus: every node must derive these exact positions from the seed (a change here
    is a protocol change and needs a new format version)."""
    pos = seeded_positions(seed=SEED, offset=512, numel=4096, keep_ppm=PPM)
    assert pos.size == topk_count(4096, PPM) == 245
    assert len(set(pos.tolist())) == pos.size and list(pos) == sorted(pos)
    assert 0 <= int(pos[0]) and int(pos[-1]) < 4096
    digest = hashlib.sha256(pos.astype("<i8").tobytes()).hexdigest()
    assert digest == PINNED_POSITIONS_SHA256
    assert seeded_positions(seed=0, offset=0, numel=1, keep_ppm=1).tolist() == [0]


PINNED_POSITIONS_SHA256 = "5c5730d03213a0d171bc3690979233b1559c5a3f6f39c0ebc6fd8bee8822f555"


def test_positions_are_spread_evenly() -> None:
    hits = np.zeros(1000, dtype=np.int64)
    for seed in range(200):
        hits[seeded_positions(seed=seed, offset=0, numel=1000, keep_ppm=100_000)] += 1
    assert hits.sum() == 200 * 100
    assert 5 <= hits.min() and hits.max() <= 40  # mean 20: no position favoured or starved


def test_error_feedback_ships_everything_over_rounds() -> None:
    raw = _raw()
    res = None
    shipped = {k: torch.zeros_like(v) for k, v in raw.items()}
    for rnd in range(60):
        sparse, nres = compress_with_feedback(
            raw if rnd == 0 else {k: torch.zeros_like(v) for k, v in raw.items()},
            res,
            topk_ppm=200_000,
            value_format="sign",
            index_seed=rnd,
        )
        acc = {k: (raw[k] if rnd == 0 else 0) + (res[k] if res else 0) for k in raw}
        dense = {k: sparse[k].dense() for k in sparse}
        for k in raw:
            assert torch.equal(nres[k], acc[k] - dense[k])
            shipped[k] += dense[k]
        res = nres
    err = sum(float((shipped[k] - raw[k]).norm()) for k in raw)
    norm = sum(float(raw[k].norm()) for k in raw)
    assert err / norm < 0.25  # one update, delivered over rounds by 1-bit signs


def test_zero_tensor_encodes_a_zero_scale_and_no_signs() -> None:
    raw = _raw()
    raw["b.lora_B.weight"] = torch.zeros(32, 8)
    dec = decode_update(_update(raw), layout=LAYOUT)
    st = dec.tensors["b.lora_B.weight"]
    assert float(st.scale) == 0.0 and bool((st.values == 1).all())  # type: ignore[arg-type]
    assert float(dec.dense()["b.lora_B.weight"].abs().sum()) == 0.0


def _offsets() -> tuple[int, int, int]:
    """(start of seed+ppm, start of scales, start of signs) in `_update()`'s bytes."""
    seed_at = 4 + 1 + 32 + 1 + len(CPU_DET_V1)
    return seed_at, seed_at + 12, seed_at + 12 + 2 * len(LAYOUT)


def _patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def _edits() -> list[tuple[str, Callable[[bytes], bytes], str]]:
    seed_at, scales_at, signs_at = _offsets()
    last = TOTAL_KEPT % 8
    return [
        ("truncated", lambda d: d[:-1], "need"),
        ("extra byte", lambda d: d + b"\x00", "need"),
        ("header only", lambda d: d[:20], "truncated"),
        ("format code", lambda d: _patch(d, 4, b"\x07"), "format code"),
        ("class length 0", lambda d: _patch(d, 37, b"\x00"), "executor_class"),
        ("class length long", lambda d: _patch(d, 37, b"\xff"), "executor_class"),
        ("class not ascii", lambda d: _patch(d, 38, b"\xff"), "executor_class"),
        ("class bad char", lambda d: _patch(d, 38, b" "), "executor_class"),
        ("ppm 0", lambda d: _patch(d, seed_at + 8, struct.pack("<I", 0)), "keep_ppm"),
        ("ppm over", lambda d: _patch(d, seed_at + 8, struct.pack("<I", 10**6 + 1)), "keep_ppm"),
        ("other ppm", lambda d: _patch(d, seed_at + 8, struct.pack("<I", PPM * 2)), "need"),
        ("negative zero scale", lambda d: _patch(d, scales_at, b"\x00\x80"), "non-negative"),
        ("negative scale", lambda d: _patch(d, scales_at, b"\x00\xbc"), "non-negative"),
        ("inf scale", lambda d: _patch(d, scales_at, b"\x00\x7c"), "finite"),
        ("nan scale", lambda d: _patch(d, scales_at, b"\x01\x7e"), "finite"),
        (
            "zero scale with signs",
            lambda d: _zero_scale_with_sign(d, scales_at, signs_at),
            "scale 0",
        ),
        ("padding bit", lambda d: _patch(d, len(d) - 1, bytes([d[-1] | (1 << last)])), "padding"),
    ]


def _zero_scale_with_sign(data: bytes, scales_at: int, signs_at: int) -> bytes:
    data = _patch(data, scales_at, b"\x00\x00")
    return _patch(data, signs_at, bytes([data[signs_at] | 1]))


@pytest.mark.parametrize(("name", "edit", "match"), _edits(), ids=[e[0] for e in _edits()])
def test_malformed_bytes_are_typed_errors(
    name: str, edit: Callable[[bytes], bytes], match: str
) -> None:
    data = _update()
    assert TOTAL_KEPT % 8, "the padding case needs a partial last byte"
    with pytest.raises(EncodingError, match=match):
        decode_update(edit(data), layout=LAYOUT)


def test_wrong_layout_and_size_limit_are_rejected() -> None:
    data = _update()
    other = dict(LAYOUT) | {"d.lora_B.weight": (8, 8)}
    with pytest.raises(EncodingError, match="need"):
        decode_update(data, layout=other)
    with pytest.raises(EncodingError, match="limit"):
        decode_update(data, layout=LAYOUT, max_bytes=len(data) - 1)
    assert decode_update(data, layout=LAYOUT, max_bytes=len(data)).digest


def test_encoder_refuses_what_the_decoder_would_refuse() -> None:
    sparse = compress(_raw(), topk_ppm=PPM, value_format="sign", index_seed=SEED)
    key = "a.lora_B.weight"
    with pytest.raises(EncodingError, match="positions"):
        encode_update(sparse, _meta(seed=SEED + 1))
    with pytest.raises(EncodingError, match="index_seed"):
        encode_update(sparse, dataclasses.replace(_meta(), index_seed=None))
    with pytest.raises(EncodingError, match="keep_ppm"):
        encode_update(sparse, dataclasses.replace(_meta(), keep_ppm=0))
    st = sparse[key]
    bad_codes = dataclasses.replace(st, values=torch.zeros_like(st.values))
    with pytest.raises(EncodingError, match="-1 or"):
        encode_update(sparse | {key: bad_codes}, _meta())
    bad_scale = dataclasses.replace(st, scale=torch.tensor(0.1, dtype=torch.float32))
    with pytest.raises(EncodingError, match="fp16"):
        encode_update(sparse | {key: bad_scale}, _meta())
    topk = UpdateMeta(TASK_ID, CPU_DET_V1, "fp16", index_seed=SEED)
    with pytest.raises(EncodingError, match="seeded formats only"):
        encode_update(compress(_raw(), topk_ppm=PPM, value_format="fp16"), topk)
    with pytest.raises(CompressionError, match="index seed"):
        compress(_raw(), topk_ppm=PPM, value_format="sign")
    with pytest.raises(CompressionError, match="unsigned 64-bit"):
        seeded_positions(seed=-1, offset=0, numel=4, keep_ppm=PPM)


_SUBPROCESS = """
import hashlib, torch
from r3mes.work.compression import compress_with_feedback
from r3mes.work.encoding import UpdateMeta, encode_update
gen = torch.Generator().manual_seed(5)
raw = {f"l{i}.lora_B.weight": torch.randn(300, 8, generator=gen) * 1e-3 for i in range(4)}
res, out = None, []
for rnd in range(3):
    sparse, res = compress_with_feedback(
        raw, res, topk_ppm=60_000, value_format="sign", index_seed=77 + rnd
    )
    meta = UpdateMeta("ab" * 32, "cpu-fp32-det-v1", "sign", index_seed=77 + rnd, keep_ppm=60_000)
    out.append(encode_update(sparse, meta))
print(hashlib.sha256(b"".join(out)).hexdigest())
"""


def test_bytes_are_identical_across_fresh_processes_and_thread_counts() -> None:
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        code = f"import torch; torch.set_num_threads({threads})\n" + _SUBPROCESS
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def _sign_task(make_task: Callable[..., Task]) -> Task:
    task = make_task()
    return dataclasses.replace(
        task, hyper=dataclasses.replace(task.hyper, value_format="sign", topk_ppm=PPM)
    )


def test_miner_submission_is_v3_and_the_validator_accepts_it_by_re_execution(
    domain_dataset: TokenDataset,
    tiny_model: torch.nn.Module,
    make_task: Callable[..., Task],
) -> None:
    task = _sign_task(make_task)
    shard = shard_of(domain_dataset, shard_index=task.shard_index, n_shards=task.n_shards)
    sub = build_submission(
        task=task, model=tiny_model, adapter_state=None, shard=shard, residual=None
    )
    assert sub.encoded[:4] == SEEDED_MAGIC
    ok = verify(
        task=task,
        submitted=sub.encoded,
        model=tiny_model,
        adapter_state=None,
        shard=shard,
        residual=None,
        executor_class=CPU_DET_V1,
    )
    assert ok.accepted and ok.digest_match
    # the same training result with positions from another seed is refused by identity
    raw = train_update(task=task, model=tiny_model, adapter_state=None, shard=shard)
    other = dataclasses.replace(task, seed=task.seed + 1)
    forged = encode_update(
        compress(raw, topk_ppm=PPM, value_format="sign", index_seed=other.seed),
        UpdateMeta(task.task_id, CPU_DET_V1, "sign", index_seed=other.seed, keep_ppm=PPM),
    )
    bad = verify(
        task=task,
        submitted=forged,
        model=tiny_model,
        adapter_state=None,
        shard=shard,
        residual=None,
        executor_class=CPU_DET_V1,
    )
    assert not bad.accepted and "index seed" in bad.reason
    # flipping one sign bit (a tampered value) is refused by the digest
    flipped = sub.encoded[:-1] + bytes([sub.encoded[-1] ^ 1])
    tampered = verify(
        task=task,
        submitted=flipped,
        model=tiny_model,
        adapter_state=None,
        shard=shard,
        residual=None,
        executor_class=CPU_DET_V1,
    )
    assert not tampered.accepted
    again = encode_for_task(task=task, raw=raw, residual=None, executor_class=CPU_DET_V1)
    assert again.encoded == sub.encoded
