from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from r3mes.work.canonical import dump_canonical, load_canonical, tensors_digest
from r3mes.work.compression import compress, compress_with_feedback
from r3mes.work.encoding import (
    UPDATE_FORMAT_VERSION,
    UpdateMeta,
    decode_update,
    encode_update,
    layout_digest,
    layout_of,
    update_digest,
)
from r3mes.work.errors import EncodingError

META = UpdateMeta(task_id="ab" * 32, executor_class="cpu-fp32-det-v1", value_format="fp16")


def _raw() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "x.lora_A.weight": torch.randn(4, 16, generator=gen),
        "x.lora_B.weight": torch.randn(16, 4, generator=gen),
    }


LAYOUT = layout_of(_raw())


def _update(value_format: str = "fp16", topk_ppm: int = 250_000) -> bytes:
    sparse = compress(_raw(), topk_ppm=topk_ppm, value_format=value_format)
    meta = UpdateMeta(
        task_id=META.task_id, executor_class=META.executor_class, value_format=value_format
    )
    return encode_update(sparse, meta)


@pytest.mark.parametrize("value_format", ["fp16", "int8"])
@pytest.mark.parametrize("topk_ppm", [1, 250_000, 1_000_000])
def test_round_trip(value_format: str, topk_ppm: int) -> None:
    sparse = compress(_raw(), topk_ppm=topk_ppm, value_format=value_format)
    data = _update(value_format, topk_ppm)
    dec = decode_update(data, layout=LAYOUT)
    assert dec.meta.value_format == value_format and dec.meta.task_id == "ab" * 32
    assert encode_update(dec.tensors, dec.meta) == data
    assert dec.digest == update_digest(data)
    for key, st in sparse.items():
        assert torch.equal(dec.tensors[key].indices, st.indices)
        assert torch.equal(dec.tensors[key].values, st.values)
        assert torch.equal(dec.dense()[key], st.dense())


def test_encoding_is_readable_by_safetensors_and_names_no_keys() -> None:
    data = _update("int8")
    tensors = st_load(data)
    assert set(tensors) == {"indices", "scales", "values"}
    assert tensors["indices"].dtype == torch.uint8 and tensors["values"].dtype == torch.int8
    head_len = struct.unpack("<Q", data[:8])[0]
    header = data[8 : 8 + head_len].decode()
    assert "lora" not in header and layout_digest(LAYOUT) in header
    assert f'"format_version":"{UPDATE_FORMAT_VERSION}"' in header


def test_header_size_does_not_grow_with_the_number_of_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = []
    for n in (2, 100):
        raw = {f"layer{i:03d}.lora_B.weight": torch.randn(64, 8, generator=gen) for i in range(n)}
        data = encode_update(compress(raw, topk_ppm=1000, value_format="fp16"), META)
        sizes.append(struct.unpack("<Q", data[:8])[0])
        assert len(decode_update(data, layout=layout_of(raw)).tensors) == n
    assert abs(sizes[0] - sizes[1]) <= 8 and max(sizes) < 400  # only offsets' digits differ


def test_small_indices_cost_one_byte() -> None:
    # 25 % density on a 64-entry tensor: every gap is below 128
    data = _update("fp16")
    tensors, _ = load_canonical(data)
    assert tensors["indices"].numel() == tensors["values"].numel()


def test_wrong_layout_is_rejected() -> None:
    data = _update()
    other = dict(LAYOUT) | {"x.lora_B.weight": (4, 16)}  # same entry count, other shape
    with pytest.raises(EncodingError, match="layout"):
        decode_update(data, layout=other)
    with pytest.raises(EncodingError, match="layout"):
        decode_update(data, layout={})


def test_non_canonical_layout_is_rejected() -> None:
    data = _update()
    tensors, metadata = load_canonical(data)
    # the same content written by the reference writer: valid safetensors, other bytes
    other = st_save(tensors, metadata=metadata)
    if other != data:
        with pytest.raises(EncodingError, match="canonical"):
            decode_update(other, layout=LAYOUT)
    with pytest.raises(EncodingError, match="canonical"):
        decode_update(data + b"\0", layout=LAYOUT)  # trailing bytes
    head_len = struct.unpack("<Q", data[:8])[0]
    padded = (
        struct.pack("<Q", head_len + 8) + data[8 : 8 + head_len] + b" " * 8 + data[8 + head_len :]
    )
    with pytest.raises(EncodingError):
        decode_update(padded, layout=LAYOUT)


def test_truncated_garbled_and_oversize_are_rejected() -> None:
    data = _update()
    for bad in (b"", data[:7], data[:20], data[:-3], b"\xff" * 64, bytes(reversed(data))):
        with pytest.raises(EncodingError):
            decode_update(bad, layout=LAYOUT)
    with pytest.raises(EncodingError, match="limit"):
        decode_update(data, layout=LAYOUT, max_bytes=len(data) - 1)
    flipped = bytearray(data)
    flipped[12] ^= 0x55  # inside the JSON header
    with pytest.raises(EncodingError):
        decode_update(bytes(flipped), layout=LAYOUT)


# An in-place change to an update's decoded tensors and metadata.
Edit = Callable[[dict[str, torch.Tensor], dict[str, str]], object]


def _rewrite(data: bytes, edit: Edit) -> bytes:
    tensors, metadata = load_canonical(data)
    edit(tensors, metadata)
    return dump_canonical(tensors, metadata)


def _set(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Edit:
    return lambda t, m: t.__setitem__(name, fn(t[name]))


def _u8(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t, m: m.__setitem__("format_version", "1"), "unsupported.*version '1'"),
        (lambda t, m: m.__setitem__("format_version", "3"), "unsupported.*version '3'"),
        (lambda t, m: m.__setitem__("format", "other"), "unsupported update format"),
        (lambda t, m: m.pop("format_version"), "unsupported"),
        (lambda t, m: m.pop("layout_sha256"), "keys"),
        (lambda t, m: m.__setitem__("shapes", "{}"), "keys"),
        (lambda t, m: m.__setitem__("task_id", "XYZ"), "hex"),
        (lambda t, m: m.__setitem__("executor_class", ""), "executor_class"),
        (lambda t, m: m.__setitem__("layout_sha256", "0" * 64), "layout"),
        (lambda t, m: t.pop("values"), "float16 or int8"),
        (lambda t, m: t.__setitem__("extra", torch.ones(1)), "indices, values"),
        (_set("indices", lambda x: x.to(torch.int32)), "uint8"),
        (_set("indices", lambda x: x[:-1]), "indices but"),
        (_set("indices", lambda x: torch.cat([x, _u8([0])])), "indices but|outside"),
        (_set("indices", lambda x: torch.cat([x[:-1], _u8([0x80])])), "truncated"),
        (_set("indices", lambda x: torch.cat([_u8([0x81, 0x00]), x[1:]])), "minimal"),
        (_set("indices", lambda x: torch.cat([_u8([0xFF] * 5 + [0x01]), x[1:]])), "longer"),
        (_set("indices", lambda x: torch.cat([x[:-1], _u8([0x7F])])), "outside|past"),
        (_set("values", lambda x: x.float()), "float16 or int8"),
        (_set("values", lambda x: x[:-1]), "values"),
        (_set("values", lambda x: x * float("inf")), "finite"),
        (_set("values", lambda x: x[:0]), "keeps 1 to"),
    ],
)
def test_semantically_invalid_updates_are_rejected(edit: Edit, match: str) -> None:
    with pytest.raises(EncodingError, match=match):
        decode_update(_rewrite(_update(), edit), layout=LAYOUT)


def test_update_that_skips_a_tensor_is_rejected() -> None:
    # only positions in the first tensor (x.lora_A.weight, 64 entries): B gets nothing
    def edit(t: dict[str, torch.Tensor], m: dict[str, str]) -> None:
        t["indices"] = _u8([0, 0])
        t["values"] = t["values"][:2]

    with pytest.raises(EncodingError, match="no entry"):
        decode_update(_rewrite(_update(), edit), layout=LAYOUT)


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("scales", lambda x: x * 0), "positive"),
        (_set("scales", lambda x: x[:1]), "one entry per tensor"),
        (lambda t, m: t.pop("scales"), "scales"),
    ],
)
def test_invalid_int8_scales_are_rejected(edit: Edit, match: str) -> None:
    with pytest.raises(EncodingError, match=match):
        decode_update(_rewrite(_update("int8"), edit), layout=LAYOUT)


def test_encode_rejects_mismatched_value_format() -> None:
    gen = torch.Generator().manual_seed(0)
    sparse = compress({"k": torch.randn(8, generator=gen)}, topk_ppm=500_000, value_format="int8")
    with pytest.raises(EncodingError, match="value format"):
        encode_update(sparse, META)
    with pytest.raises(EncodingError):
        encode_update({}, META)


_SUBPROCESS = """
import hashlib, torch
from r3mes.work.compression import compress_with_feedback
from r3mes.work.encoding import UpdateMeta, encode_update
gen = torch.Generator().manual_seed(7)
raw = {f"l{i}.lora_B.weight": torch.randn(256, 8, generator=gen) for i in range(6)}
raw["l0.lora_B.weight"][:8] = 0.5  # ties: the lower flat index wins
meta = UpdateMeta(task_id="ab" * 32, executor_class="cpu-fp32-det-v1", value_format="int8")
res = None
out = []
for _ in range(3):
    sparse, res = compress_with_feedback(raw, res, topk_ppm=20_000, value_format="int8")
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


def test_error_feedback_absorbs_int8_quantisation_error() -> None:
    raw = _raw()
    sparse, residual = compress_with_feedback(raw, None, topk_ppm=1_000_000, value_format="int8")
    data = encode_update(sparse, UpdateMeta(META.task_id, META.executor_class, "int8"))
    dense = decode_update(data, layout=LAYOUT).dense()
    for k in raw:
        assert torch.equal(dense[k] + residual[k], raw[k])
        assert 0 < float(residual[k].abs().max()) <= float(raw[k].abs().max()) / 254 * 1.0001


def test_tensors_digest_is_order_independent_and_value_sensitive() -> None:
    a = {"x": torch.ones(2), "y": torch.zeros(3)}
    b = {"y": torch.zeros(3), "x": torch.ones(2)}
    assert tensors_digest(a) == tensors_digest(b)
    assert tensors_digest(a) != tensors_digest({"x": torch.ones(2), "y": torch.full((3,), 1e-30)})


def test_layout_digest_depends_on_names_and_shapes_not_order() -> None:
    a = {"a": (2, 3), "b": (4,)}
    assert layout_digest(a) == layout_digest({"b": (4,), "a": (2, 3)})
    assert layout_digest(a) != layout_digest({"a": (3, 2), "b": (4,)})
    assert layout_digest(a) != layout_digest({"a": (2, 3), "c": (4,)})
    assert np.frombuffer(bytes.fromhex(layout_digest(a)), dtype=np.uint8).size == 32


@pytest.mark.parametrize(
    "layout",
    [{"a": 5}, {"a": "ab"}, {"a": (2.0,)}, {"a": (True,)}, {"a": ()}, {3: (2,)}, [("a", (2,))], {}],
    ids=["int", "str", "float", "bool", "empty-shape", "int-key", "list", "empty"],
)
def test_malformed_layout_is_an_encoding_error(layout: Any) -> None:
    with pytest.raises(EncodingError, match="layout"):
        decode_update(_update(), layout=layout)


@pytest.mark.parametrize(
    "tensors, metadata, match",
    [
        ({1: torch.ones(1)}, {}, "names must be strings"),
        ({"__metadata__": torch.ones(1)}, {}, "names must be strings"),
        ({"a": [1.0]}, {}, "not a torch.Tensor"),
        ({"a": torch.ones(1)}, {"k": 1}, "metadata"),
        ({"a": torch.ones(1)}, {2: "v"}, "metadata"),
        ([("a", torch.ones(1))], {}, "mappings"),
    ],
)
def test_dump_canonical_rejects_malformed_input(tensors: Any, metadata: Any, match: str) -> None:
    with pytest.raises(EncodingError, match=match):
        dump_canonical(tensors, metadata)


@pytest.mark.parametrize(
    "header",
    [b"[" * 2000 + b"]" * 2000, b'{"a":' * 2000 + b"1" + b"}" * 2000, b'{"a":[[[[1]]]]}'],
    ids=["lists", "objects", "four-levels"],
)
def test_deeply_nested_header_is_an_encoding_error(header: bytes) -> None:
    header += b" " * (-len(header) % 8)
    with pytest.raises(EncodingError, match="nests"):
        load_canonical(struct.pack("<Q", len(header)) + header)


def test_encode_rejects_an_invalid_executor_class() -> None:
    sparse = compress(_raw(), topk_ppm=250_000, value_format="fp16")
    for bad in ("", "cpu fp32", "x" * 129):
        with pytest.raises(EncodingError, match="executor_class"):
            encode_update(sparse, UpdateMeta(META.task_id, bad, "fp16"))


def _crafted(
    shape: list[int], *, dtype: str = "U8", metadata: dict[str, str] | None = None
) -> bytes:
    """A safetensors file whose one tensor has `shape` and exactly the bytes it claims."""
    size = math.prod(shape)
    header: dict[str, object] = {"__metadata__": metadata or {}}
    header["x"] = {"dtype": dtype, "shape": shape, "data_offsets": [0, size]}
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"\0" * size


@pytest.mark.parametrize(
    "shape, match",
    [
        ([1] * 65, "65 dimensions"),  # torch: ValueError "number of dimensions must be..."
        ([0] * 65, "65 dimensions"),
        ([1] * 9, "9 dimensions"),
        ([0, 2**47, 2**47], "spans over"),  # torch: RuntimeError "Stride calculation overflowed"
        ([2**40, 0], "spans over"),
    ],
)
def test_crafted_shapes_are_encoding_errors_before_any_allocation(
    shape: list[int], match: str
) -> None:
    """Issue 19 item 9: 120-216 byte headers whose shape made torch raise untyped errors."""
    data = _crafted(shape)
    assert len(data) <= 216
    with pytest.raises(EncodingError, match=match):
        load_canonical(data)
    with pytest.raises(EncodingError, match=match):
        decode_update(data, layout=LAYOUT)


def test_dump_canonical_refuses_what_load_would_refuse() -> None:
    with pytest.raises(EncodingError, match="9 dimensions"):
        dump_canonical({"a": torch.zeros([1] * 9)}, {})
    assert load_canonical(dump_canonical({"a": torch.zeros([1] * 8)}, {}))[0]["a"].dim() == 8
