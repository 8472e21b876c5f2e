from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from r3mes.work.canonical import dump_canonical, load_canonical, tensors_digest
from r3mes.work.compression import compress
from r3mes.work.encoding import UpdateMeta, decode_update, encode_update, update_digest
from r3mes.work.errors import EncodingError

META = UpdateMeta(
    task_id="ab" * 32,
    base_model_cid="bafybase",
    executor_class="cpu-fp32-det-v1",
    residual_sha256="cd" * 32,
    value_format="fp16",
)


def _update(value_format: str = "fp16") -> bytes:
    gen = torch.Generator().manual_seed(0)
    raw = {
        "x.lora_A.weight": torch.randn(4, 16, generator=gen),
        "x.lora_B.weight": torch.randn(16, 4, generator=gen),
    }
    sparse = compress(raw, topk_ppm=250_000, value_format=value_format)
    meta = UpdateMeta(**{**META.__dict__, "value_format": value_format})
    return encode_update(sparse, meta)


@pytest.mark.parametrize("value_format", ["fp16", "int8"])
def test_round_trip(value_format):
    data = _update(value_format)
    dec = decode_update(data)
    assert dec.meta.value_format == value_format and dec.meta.task_id == "ab" * 32
    assert encode_update(dec.tensors, dec.meta) == data
    assert dec.digest == update_digest(data)
    assert set(dec.dense()) == {"x.lora_A.weight", "x.lora_B.weight"}


def test_encoding_is_readable_by_safetensors():
    data = _update()
    tensors = st_load(data)
    assert set(tensors) == {"indices", "values"}
    assert tensors["values"].dtype == torch.float16 and tensors["indices"].dtype == torch.int32


def test_non_canonical_layout_is_rejected():
    data = _update()
    tensors, metadata = load_canonical(data)
    # the same content written by the reference writer: valid safetensors, other bytes
    other = st_save(tensors, metadata=metadata)
    if other != data:
        with pytest.raises(EncodingError, match="canonical"):
            decode_update(other)
    with pytest.raises(EncodingError, match="canonical"):
        decode_update(data + b"\0")  # trailing bytes
    head_len = struct.unpack("<Q", data[:8])[0]
    padded = (
        struct.pack("<Q", head_len + 8) + data[8 : 8 + head_len] + b" " * 8 + data[8 + head_len :]
    )
    with pytest.raises(EncodingError):
        decode_update(padded)


def test_truncated_garbled_and_oversize_are_rejected():
    data = _update()
    for bad in (b"", data[:7], data[:20], data[:-3], b"\xff" * 64, bytes(reversed(data))):
        with pytest.raises(EncodingError):
            decode_update(bad)
    with pytest.raises(EncodingError, match="limit"):
        decode_update(data, max_bytes=len(data) - 1)
    flipped = bytearray(data)
    flipped[12] ^= 0x55  # inside the JSON header
    with pytest.raises(EncodingError):
        decode_update(bytes(flipped))


def _rewrite(data: bytes, edit) -> bytes:
    tensors, metadata = load_canonical(data)
    edit(tensors, metadata)
    return dump_canonical(tensors, metadata)


def _set(name, fn):
    return lambda t, m: t.__setitem__(name, fn(t[name]))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t, m: m.__setitem__("format_version", "2"), "unsupported"),
        (lambda t, m: m.pop("residual_sha256"), "keys"),
        (lambda t, m: m.__setitem__("task_id", "XYZ"), "hex"),
        (lambda t, m: m.__setitem__("value_format", "fp8"), "value_format"),
        (lambda t, m: m.__setitem__("shapes", "{}"), "shapes"),
        (lambda t, m: m.__setitem__("shapes", "not json"), "JSON"),
        (lambda t, m: m.__setitem__("shapes", '{"x.lora_A.weight":[4,16]}'), "outside"),
        (lambda t, m: m.__setitem__("shapes", '{"a":[128],"b":[1]}'), "no entry"),
        (lambda t, m: t.pop("values"), "indices, values"),
        (lambda t, m: t.__setitem__("extra", torch.ones(1)), "indices, values"),
        (_set("indices", lambda x: x.flip(0)), "increasing"),
        (_set("indices", lambda x: x + 1000), "outside"),
        (_set("indices", lambda x: x.long()), "int32"),
        (_set("values", lambda x: x.float()), "values"),
        (_set("values", lambda x: x[:-1]), "values"),
        (_set("values", lambda x: x * float("inf")), "finite"),
    ],
)
def test_semantically_invalid_updates_are_rejected(edit, match):
    with pytest.raises(EncodingError, match=match):
        decode_update(_rewrite(_update(), edit))


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("scales", lambda x: x * 0), "positive"),
        (_set("scales", lambda x: x[:1]), "one entry per tensor"),
        (lambda t, m: t.pop("scales"), "scales"),
    ],
)
def test_invalid_int8_scales_are_rejected(edit, match):
    with pytest.raises(EncodingError, match=match):
        decode_update(_rewrite(_update("int8"), edit))


def test_header_stays_small_with_many_tensors():
    gen = torch.Generator().manual_seed(0)
    raw = {f"layer{i:03d}.lora_B.weight": torch.randn(64, 8, generator=gen) for i in range(100)}
    data = encode_update(compress(raw, topk_ppm=1000, value_format="fp16"), META)
    header_len = struct.unpack("<Q", data[:8])[0]
    assert header_len < 100 * 40 + 600  # ~ one short shapes entry per tensor, no per-tensor rows
    assert len(decode_update(data).tensors) == 100


def test_encode_rejects_mismatched_value_format():
    gen = torch.Generator().manual_seed(0)
    sparse = compress({"k": torch.randn(8, generator=gen)}, topk_ppm=500_000, value_format="int8")
    with pytest.raises(EncodingError, match="value format"):
        encode_update(sparse, META)
    with pytest.raises(EncodingError):
        encode_update({}, META)


def test_tensors_digest_is_order_independent_and_value_sensitive():
    a = {"x": torch.ones(2), "y": torch.zeros(3)}
    b = {"y": torch.zeros(3), "x": torch.ones(2)}
    assert tensors_digest(a) == tensors_digest(b)
    assert tensors_digest(a) != tensors_digest({"x": torch.ones(2), "y": torch.full((3,), 1e-30)})
