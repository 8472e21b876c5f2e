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
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from r3mes.work.canonical import DEFAULT_MAX_BYTES, dump_canonical, load_canonical
from r3mes.work.compression import SparseTensor, decompress
from r3mes.work.errors import EncodingError
from r3mes.work.task import VALUE_FORMATS, canonical_json
from r3mes.work.varint import decode_positions, encode_positions

UPDATE_FORMAT = "r3mes-update"
UPDATE_FORMAT_VERSION = "2"
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
    """"fp16" or "int8" (encoded as the dtype of the values tensor)."""


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
