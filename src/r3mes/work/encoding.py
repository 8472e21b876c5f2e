"""Canonical encoding of a compressed update, and its digest.

Layout by reference: which tensors an update covers and their shapes follow from the task
(base model + LoRA config), so the bytes carry only the SHA-256 of that layout
(`layout_digest`), never the key names; the decoder is handed the layout and checks the
digest. The layout's tensors are laid end to end in sorted-key order, each flattened C-style,
and the update is a canonical safetensors file (`r3mes.work.canonical`) of at most three
tensors over that concatenation:

    indices   uint8, LEB128 varints of the gaps between kept positions (`r3mes.work.varint`)
    values    float16 values, or int8 codes ("int8" format), one per kept position
    scales    float32, one per layout tensor in sorted-key order ("int8" format only)

String metadata::

    format            "r3mes-update"
    format_version    "2"
    task_id           hex SHA-256 of the task's canonical bytes (it names the base model)
    executor_class    the class that produced the update
    layout_sha256     `layout_digest` of the tensors' names and shapes

The value format is the dtype of ``values`` (F16: "fp16", I8: "int8"). Every byte of the
header counts: a miner's update on the shipped model is ~800 bytes at 1 % density. That is
why version 2 dropped what version 1 carried redundantly: the key names (now the layout
digest), the value format (the dtype) and the error-feedback residual's digest (the validator
replays the residual, and in exact mode any other residual changes the update's bytes).

The digest of an update is the SHA-256 of these bytes. `decode_update` enforces size limits,
validates every field and re-encodes, so non-canonical bytes are rejected. Version 1 (int32
indices, key names in the header) is no longer read: updates live for one round and nothing
persisted depends on it.

Version 3 (value format "sign": the round seed picks the kept positions, one bit per entry) is
a compact binary encoding instead of safetensors, because at ~250 bytes per update a JSON
header would be most of it. All integers little-endian::

    magic           4 bytes   b"R3U" + bytes([3])   (format and version)
    value format    1 byte    1 = "sign" (no other code is defined)
    task_id         32 bytes  SHA-256 of the task's canonical bytes
    executor_class  1 byte n (1-128) + n ASCII bytes of [A-Za-z0-9._:/+-]
    index_seed      8 bytes   u64: the round seed that picks the positions
    keep_ppm        4 bytes   u32 in [1, 10**6]: the share of each tensor kept
    scales          2 bytes per layout tensor (sorted keys): fp16, finite, +0 or positive
    signs           ceil(K / 8) bytes, K = kept entries of all tensors (sorted keys, then
                    position): bit i (LSB first) is 1 for a negative entry; the padding bits,
                    and every bit of a tensor whose scale is 0, are 0

The positions follow from (layout, index_seed, keep_ppm) by `seeded_positions`, so the bytes
carry none, and no layout digest either: the task the bytes name fixes the base model and
LoRA config, hence the layout, and every length above must match the layout exactly. A
safetensors file starts with its header length (u64 LE, at most 1 MiB), so it can never start
with the v3 magic: `decode_update` tells the two apart by the first four bytes.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from r3mes.work.canonical import DEFAULT_MAX_BYTES, dump_canonical, load_canonical
from r3mes.work.compression import (
    SEEDED_FORMATS,
    SparseTensor,
    decompress,
    seeded_positions,
    topk_count,
)
from r3mes.work.errors import EncodingError
from r3mes.work.task import VALUE_FORMATS, canonical_json
from r3mes.work.varint import decode_positions, encode_positions

UPDATE_FORMAT = "r3mes-update"
UPDATE_FORMAT_VERSION = "2"
"""Version of the safetensors encoding (top-k "fp16" and "int8")."""
SEEDED_FORMAT_VERSION = 3
"""Version of the binary encoding of seeded formats ("sign")."""
SEEDED_MAGIC = b"R3U" + bytes([SEEDED_FORMAT_VERSION])
_SEEDED_CODES = {"sign": 1}
_SEEDED_FIXED = struct.Struct("<4sB32sB")
MAX_NUMEL = 1 << 31
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CLASS = re.compile(r"^[A-Za-z0-9._:/+-]{1,128}$")
_META_KEYS = {
    "format",
    "format_version",
    "task_id",
    "executor_class",
    "layout_sha256",
}

_VALUE_DTYPES = {torch.float16: "fp16", torch.int8: "int8"}
Layout = Mapping[str, tuple[int, ...]]
"""Tensor name -> shape of every tensor an update covers."""


def layout_of(tensors: Mapping[str, torch.Tensor | SparseTensor]) -> dict[str, tuple[int, ...]]:
    """The layout (name -> shape, sorted names) of dense or sparse `tensors`."""
    return {k: tuple(tensors[k].shape) for k in sorted(tensors)}


def layout_digest(layout: Layout) -> str:
    """SHA-256 (hex) of the canonical JSON ``{name: [dims]}`` of `layout`."""
    obj = {k: list(layout[k]) for k in sorted(layout)}
    return hashlib.sha256(canonical_json(obj)).hexdigest()


@dataclass(frozen=True)
class UpdateMeta:
    """Who and what an encoded update is for."""

    task_id: str
    executor_class: str
    value_format: str
    """"fp16" or "int8" (encoded as the dtype of the values tensor), or "sign" (version 3)."""
    index_seed: int | None = None
    """"sign": the round seed that picked the kept positions; None for top-k formats."""
    keep_ppm: int | None = None
    """"sign": the share of each tensor kept, in parts per million; None for top-k formats."""


@dataclass(frozen=True)
class DecodedUpdate:
    """A decoded, validated update."""

    meta: UpdateMeta
    tensors: dict[str, SparseTensor]
    digest: str
    """SHA-256 (hex) of the canonical bytes."""

    def dense(self) -> dict[str, torch.Tensor]:
        return decompress(self.tensors)


def update_digest(data: bytes) -> str:
    """SHA-256 (hex) of an encoded update."""
    return hashlib.sha256(data).hexdigest()


def encode_update(sparse: Mapping[str, SparseTensor], meta: UpdateMeta) -> bytes:
    """The canonical bytes of a compressed update."""
    if not sparse:
        raise EncodingError("an update must hold at least one tensor")
    if meta.value_format not in VALUE_FORMATS:
        raise EncodingError(f"value_format must be one of {VALUE_FORMATS}")
    if not isinstance(meta.task_id, str) or not _HEX64.fullmatch(meta.task_id):
        raise EncodingError("task_id must be 64 lowercase hex characters")
    if not isinstance(meta.executor_class, str) or not _CLASS.fullmatch(meta.executor_class):
        raise EncodingError("executor_class must be 1-128 characters of [A-Za-z0-9._:/+-]")
    if meta.value_format in SEEDED_FORMATS:
        return _encode_seeded(sparse, meta)
    if meta.index_seed is not None or meta.keep_ppm is not None:
        raise EncodingError("index_seed and keep_ppm belong to seeded formats only")
    int8 = meta.value_format == "int8"
    want = torch.int8 if int8 else torch.float16
    positions, values, scales = [], [], []
    offset = 0
    for key in sorted(sparse):
        st = sparse[key]
        if st.values.dtype != want or (st.scale is not None) != int8:
            raise EncodingError(f"tensor {key!r} does not use value format {meta.value_format}")
        positions.append(st.indices.to(torch.int64).numpy() + offset)
        values.append(st.values.reshape(-1))
        if st.scale is not None:
            scales.append(st.scale.reshape(1).to(torch.float32))
        offset += math.prod(st.shape)
    if offset > MAX_NUMEL:
        raise EncodingError(f"update has {offset} entries, over the {MAX_NUMEL} limit")
    varints = encode_positions(np.concatenate(positions))
    tensors = {"indices": torch.from_numpy(varints), "values": torch.cat(values)}
    if int8:
        tensors["scales"] = torch.cat(scales)
    metadata = {
        "format": UPDATE_FORMAT,
        "format_version": UPDATE_FORMAT_VERSION,
        "task_id": meta.task_id,
        "executor_class": meta.executor_class,
        "layout_sha256": layout_digest(layout_of(sparse)),
    }
    return dump_canonical(tensors, metadata)


def decode_update(
    data: bytes, *, layout: Layout, max_bytes: int = DEFAULT_MAX_BYTES
) -> DecodedUpdate:
    """Strictly decode an update made for `layout`; any defect raises `EncodingError`."""
    shapes = _check_layout(layout)
    if isinstance(data, bytes | bytearray) and bytes(data[:4]) == SEEDED_MAGIC:
        return _decode_seeded(bytes(data), shapes, max_bytes)
    tensors, metadata = load_canonical(data, max_bytes=max_bytes)
    meta = _parse_meta(metadata, tensors.get("values"))
    if metadata["layout_sha256"] != layout_digest(shapes):
        raise EncodingError(
            "update was made for another tensor layout (layout_sha256 differs); decode it with "
            "the layout of its task's adapter (base model + LoRA config)"
        )
    int8 = meta.value_format == "int8"
    if set(tensors) != ({"indices", "values", "scales"} if int8 else {"indices", "values"}):
        raise EncodingError("update tensors must be indices, values (and scales for int8)")
    total = sum(math.prod(s) for s in shapes.values())
    idx, vals = _check_flat(tensors["indices"], tensors["values"], meta.value_format, total)
    scales = _check_scales(tensors["scales"], len(shapes)) if int8 else None
    sparse: dict[str, SparseTensor] = {}
    offset = 0
    for n, key in enumerate(sorted(shapes)):
        numel = math.prod(shapes[key])
        lo = int(torch.searchsorted(idx, offset))
        hi = int(torch.searchsorted(idx, offset + numel))
        if lo == hi:
            raise EncodingError(f"update keeps no entry of tensor {key!r}; every tensor needs one")
        sparse[key] = SparseTensor(
            shapes[key],
            (idx[lo:hi] - offset).to(torch.int32),
            vals[lo:hi].clone(),
            None if scales is None else scales[n].clone(),
        )
        offset += numel
    return DecodedUpdate(meta=meta, tensors=sparse, digest=update_digest(bytes(data)))


def _check_layout(layout: Layout) -> dict[str, tuple[int, ...]]:
    if not isinstance(layout, Mapping) or not layout:
        raise EncodingError("a layout must map at least one tensor name to its shape")
    if not all(isinstance(k, str) for k in layout):
        raise EncodingError("layout tensor names must be strings")
    shapes: dict[str, tuple[int, ...]] = {}
    for key in sorted(layout):
        raw = layout[key]
        dims = tuple(raw) if isinstance(raw, tuple | list | torch.Size) else ()
        if not 1 <= len(dims) <= 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_NUMEL for d in dims
        ):
            raise EncodingError(
                f"layout shape for {key!r} must be a tuple of 1-8 positive ints, got {raw!r}"
            )
        shapes[key] = dims
    if sum(math.prod(s) for s in shapes.values()) > MAX_NUMEL:
        raise EncodingError(f"layout has over {MAX_NUMEL} entries")
    return shapes


def _check_flat(
    varints: torch.Tensor, vals: torch.Tensor, value_format: str, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    want = torch.int8 if value_format == "int8" else torch.float16
    if varints.dtype != torch.uint8 or varints.dim() != 1 or vals.dtype != want or vals.dim() != 1:
        raise EncodingError(f"indices must be 1-D uint8 varints and values 1-D {want}")
    if vals.numel() == 0 or vals.numel() > total:
        raise EncodingError(f"an update keeps 1 to {total} values, got {vals.numel()}")
    positions = decode_positions(varints.numpy(), limit=total)
    if positions.size != vals.numel():
        raise EncodingError(f"{positions.size} indices but {vals.numel()} values")
    if value_format == "fp16" and not bool(torch.isfinite(vals).all()):
        raise EncodingError("values must be finite")
    return torch.from_numpy(positions), vals


def _check_scales(scales: torch.Tensor, n: int) -> torch.Tensor:
    if scales.dtype != torch.float32 or tuple(scales.shape) != (n,):
        raise EncodingError(f"scales must be float32 with one entry per tensor ({n})")
    if not bool(torch.isfinite(scales).all()) or not bool((scales > 0).all()):
        raise EncodingError("scales must be finite and positive")
    return scales


def _parse_meta(md: dict[str, str], values: torch.Tensor | None) -> UpdateMeta:
    fmt, version = md.get("format"), md.get("format_version")
    if fmt != UPDATE_FORMAT or version != UPDATE_FORMAT_VERSION:
        raise EncodingError(
            f"unsupported update format {fmt!r} version {version!r}; this node reads "
            f"{UPDATE_FORMAT} version {UPDATE_FORMAT_VERSION} (upgrade the node that made it, "
            "or this one)"
        )
    if set(md) != _META_KEYS:
        raise EncodingError(f"update metadata must have exactly the keys {sorted(_META_KEYS)}")
    for name in ("task_id", "layout_sha256"):
        if not _HEX64.fullmatch(md[name]):
            raise EncodingError(f"update metadata {name!r} must be 64 lowercase hex characters")
    if not _CLASS.fullmatch(md["executor_class"]):
        raise EncodingError("update executor_class must be 1-128 characters of [A-Za-z0-9._:/+-]")
    value_format = _VALUE_DTYPES.get(values.dtype) if values is not None else None
    if value_format is None:
        raise EncodingError("update values must be a float16 or int8 tensor")
    return UpdateMeta(
        task_id=md["task_id"], executor_class=md["executor_class"], value_format=value_format
    )


def _encode_seeded(sparse: Mapping[str, SparseTensor], meta: UpdateMeta) -> bytes:
    """Version 3 bytes of a "sign" update (see the module docstring)."""
    seed, ppm = meta.index_seed, meta.keep_ppm
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        raise EncodingError("a seeded update needs index_seed, an unsigned 64-bit integer")
    if isinstance(ppm, bool) or not isinstance(ppm, int) or not 1 <= ppm <= 1_000_000:
        raise EncodingError("a seeded update needs keep_ppm, an integer in [1, 1000000]")
    shapes = layout_of(sparse)
    if sum(math.prod(s) for s in shapes.values()) > MAX_NUMEL:
        raise EncodingError(f"update has over {MAX_NUMEL} entries")
    scales: list[float] = []
    bits: list[np.ndarray] = []
    offset = 0
    for key in sorted(sparse):
        st, numel = sparse[key], math.prod(shapes[key])
        want = seeded_positions(seed=seed, offset=offset, numel=numel, keep_ppm=ppm)
        offset += numel
        idx = st.indices.to(torch.int64).numpy()
        if idx.shape != want.shape or not np.array_equal(idx, want):
            raise EncodingError(f"tensor {key!r} does not keep the positions index_seed picks")
        codes = st.values.reshape(-1)
        if st.values.dtype != torch.int8 or st.scale is None:
            raise EncodingError(f"tensor {key!r} does not use value format sign")
        scale = float(st.scale)
        if not bool(((codes == 1) | (codes == -1)).all()):
            raise EncodingError(f"tensor {key!r}: sign codes must be -1 or +1")
        half = np.float16(scale)
        if not (math.isfinite(scale) and scale >= 0 and float(half) == scale):
            raise EncodingError(f"tensor {key!r}: the scale must be a non-negative fp16 value")
        if scale == 0 and bool((codes == -1).any()):
            raise EncodingError(f"tensor {key!r}: a zero scale carries no negative signs")
        scales.append(scale)
        bits.append((codes.numpy() < 0).astype(np.uint8))
    cls = meta.executor_class.encode("ascii")
    head = _SEEDED_FIXED.pack(
        SEEDED_MAGIC, _SEEDED_CODES[meta.value_format], bytes.fromhex(meta.task_id), len(cls)
    )
    scale_bytes = np.array(scales, dtype="<f2").tobytes()
    sign_bytes = np.packbits(np.concatenate(bits), bitorder="little").tobytes()
    return head + cls + struct.pack("<QI", seed, ppm) + scale_bytes + sign_bytes


def _decode_seeded(
    data: bytes, shapes: dict[str, tuple[int, ...]], max_bytes: int
) -> DecodedUpdate:
    """Strictly decode version 3 bytes (the caller checked the magic)."""
    if len(data) > max_bytes:
        raise EncodingError(f"update is {len(data)} bytes, over the {max_bytes} limit")
    fixed = _SEEDED_FIXED.size
    if len(data) < fixed:
        raise EncodingError("update is truncated (shorter than its fixed header)")
    _, code, task_id, n = _SEEDED_FIXED.unpack_from(data)
    formats = {v: k for k, v in _SEEDED_CODES.items()}
    if code not in formats:
        raise EncodingError(f"unknown seeded value format code {code}")
    if not 1 <= n <= 128 or len(data) < fixed + n + 12:
        raise EncodingError("update executor_class length is out of range or truncated")
    try:
        executor_class = data[fixed : fixed + n].decode("ascii")
    except UnicodeDecodeError as exc:
        raise EncodingError("update executor_class is not ASCII") from exc
    if not _CLASS.fullmatch(executor_class):
        raise EncodingError("update executor_class must be 1-128 characters of [A-Za-z0-9._:/+-]")
    seed, ppm = struct.unpack_from("<QI", data, fixed + n)
    if not 1 <= ppm <= 1_000_000:
        raise EncodingError(f"keep_ppm must be in [1, 1000000], got {ppm}")
    pos = fixed + n + 12
    counts = [topk_count(math.prod(s), ppm) for s in shapes.values()]
    total = sum(counts)
    want = pos + 2 * len(shapes) + (total + 7) // 8
    if len(data) != want:
        raise EncodingError(f"update is {len(data)} bytes; its layout and keep_ppm need {want}")
    raw_scales = np.frombuffer(data, dtype="<u2", count=len(shapes), offset=pos)
    if bool(((raw_scales & 0x8000) != 0).any()) or bool(((raw_scales & 0x7C00) == 0x7C00).any()):
        raise EncodingError("sign scales must be finite and non-negative (no -0, inf or nan)")
    scales = raw_scales.view("<f2").astype(np.float32)
    pos += 2 * len(shapes)
    signs = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=pos), bitorder="little")
    if bool(signs[total:].any()):
        raise EncodingError("the padding bits after the last sign must be 0")
    sparse: dict[str, SparseTensor] = {}
    offset = start = 0
    for n_t, (key, count) in enumerate(zip(sorted(shapes), counts, strict=True)):
        numel = math.prod(shapes[key])
        idx = seeded_positions(seed=seed, offset=offset, numel=numel, keep_ppm=ppm)
        neg = signs[start : start + count]
        if scales[n_t] == 0 and bool(neg.any()):
            raise EncodingError(f"tensor {key!r} has scale 0 but negative signs")
        codes = torch.from_numpy(1 - 2 * neg.astype(np.int8))
        scale = torch.tensor(float(scales[n_t]), dtype=torch.float32)
        sparse[key] = SparseTensor(shapes[key], torch.from_numpy(idx).to(torch.int32), codes, scale)
        offset += numel
        start += count
    meta = UpdateMeta(
        task_id=task_id.hex(),
        executor_class=executor_class,
        value_format=formats[code],
        index_seed=seed,
        keep_ppm=ppm,
    )
    return DecodedUpdate(meta=meta, tensors=sparse, digest=update_digest(data))
