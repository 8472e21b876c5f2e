"""Canonical encoding of a compressed update, and its digest.

Layout: a canonical safetensors file (`r3mes.work.canonical`) with three tensors at most, so
the header stays small whatever the number of LoRA tensors. The update's tensors (PEFT key
names) are laid end to end in sorted-key order, each flattened C-style; then

    indices   int32, strictly increasing positions in that concatenation
    values    float16 values, or int8 codes ("int8" format)
    scales    float32, one per tensor in sorted-key order ("int8" format only)

String metadata::

    format            "r3mes-update"
    format_version    "1"
    task_id           hex SHA-256 of the task's canonical bytes
    base_model_cid    the task's base model
    executor_class    the class that produced the update
    residual_sha256   digest of the error-feedback residual the miner used
    value_format      "fp16" | "int8"
    shapes            canonical JSON {K: [dims]} (its key order is the layout order)

The digest of an update is the SHA-256 of these bytes. `decode_update` enforces size limits,
validates every field and re-encodes, so non-canonical bytes are rejected.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from r3mes.work.canonical import DEFAULT_MAX_BYTES, dump_canonical, load_canonical
from r3mes.work.compression import SparseTensor, decompress
from r3mes.work.errors import EncodingError
from r3mes.work.task import VALUE_FORMATS, canonical_json

UPDATE_FORMAT = "r3mes-update"
UPDATE_FORMAT_VERSION = "1"
MAX_NUMEL = 1 << 31
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_META_KEYS = {
    "format",
    "format_version",
    "task_id",
    "base_model_cid",
    "executor_class",
    "residual_sha256",
    "value_format",
    "shapes",
}


@dataclass(frozen=True)
class UpdateMeta:
    """Who and what an encoded update is for."""

    task_id: str
    base_model_cid: str
    executor_class: str
    residual_sha256: str
    value_format: str


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
    int8 = meta.value_format == "int8"
    want = torch.int8 if int8 else torch.float16
    indices, values, scales = [], [], []
    offset = 0
    for key in sorted(sparse):
        st = sparse[key]
        if st.values.dtype != want or (st.scale is not None) != int8:
            raise EncodingError(f"tensor {key!r} does not use value format {meta.value_format}")
        indices.append(st.indices.to(torch.int64) + offset)
        values.append(st.values.reshape(-1))
        if st.scale is not None:
            scales.append(st.scale.reshape(1).to(torch.float32))
        offset += math.prod(st.shape)
    if offset > MAX_NUMEL:
        raise EncodingError(f"update has {offset} entries, over the {MAX_NUMEL} limit")
    tensors = {"indices": torch.cat(indices).to(torch.int32), "values": torch.cat(values)}
    if int8:
        tensors["scales"] = torch.cat(scales)
    metadata = {
        "format": UPDATE_FORMAT,
        "format_version": UPDATE_FORMAT_VERSION,
        "task_id": meta.task_id,
        "base_model_cid": meta.base_model_cid,
        "executor_class": meta.executor_class,
        "residual_sha256": meta.residual_sha256,
        "value_format": meta.value_format,
        "shapes": canonical_json({k: list(sparse[k].shape) for k in sorted(sparse)}).decode(),
    }
    return dump_canonical(tensors, metadata)


def decode_update(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> DecodedUpdate:
    """Strictly decode an encoded update; any defect raises `EncodingError`."""
    tensors, metadata = load_canonical(data, max_bytes=max_bytes)
    meta = _parse_meta(metadata)
    shapes = _parse_shapes(metadata["shapes"])
    int8 = meta.value_format == "int8"
    if set(tensors) != ({"indices", "values", "scales"} if int8 else {"indices", "values"}):
        raise EncodingError("update tensors must be indices, values (and scales for int8)")
    idx, vals = _check_flat(tensors["indices"], tensors["values"], meta.value_format, shapes)
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


def _check_flat(
    idx: torch.Tensor, vals: torch.Tensor, value_format: str, shapes: dict[str, tuple[int, ...]]
) -> tuple[torch.Tensor, torch.Tensor]:
    want = torch.int8 if value_format == "int8" else torch.float16
    if idx.dtype != torch.int32 or idx.dim() != 1 or vals.dtype != want or vals.dim() != 1:
        raise EncodingError(f"indices must be 1-D int32 and values 1-D {want}")
    if idx.numel() != vals.numel() or idx.numel() == 0:
        raise EncodingError(f"{idx.numel()} indices but {vals.numel()} values")
    idx64 = idx.to(torch.int64)
    total = sum(math.prod(s) for s in shapes.values())
    if int(idx64[0]) < 0 or int(idx64[-1]) >= total:
        raise EncodingError(f"indices fall outside the {total} entries of the update's shapes")
    if idx64.numel() > 1 and not bool((idx64[1:] > idx64[:-1]).all()):
        raise EncodingError("indices must be strictly increasing")
    if value_format == "fp16" and not bool(torch.isfinite(vals).all()):
        raise EncodingError("values must be finite")
    return idx64, vals


def _check_scales(scales: torch.Tensor, n: int) -> torch.Tensor:
    if scales.dtype != torch.float32 or tuple(scales.shape) != (n,):
        raise EncodingError(f"scales must be float32 with one entry per tensor ({n})")
    if not bool(torch.isfinite(scales).all()) or not bool((scales > 0).all()):
        raise EncodingError("scales must be finite and positive")
    return scales


def _parse_meta(md: dict[str, str]) -> UpdateMeta:
    if set(md) != _META_KEYS:
        raise EncodingError(f"update metadata must have exactly the keys {sorted(_META_KEYS)}")
    if md["format"] != UPDATE_FORMAT or md["format_version"] != UPDATE_FORMAT_VERSION:
        raise EncodingError(
            f"unsupported update format {md['format']!r} v{md['format_version']}; this node "
            f"reads {UPDATE_FORMAT} v{UPDATE_FORMAT_VERSION}"
        )
    for name in ("task_id", "residual_sha256"):
        if not _HEX64.match(md[name]):
            raise EncodingError(f"update metadata {name!r} must be 64 lowercase hex characters")
    if md["value_format"] not in VALUE_FORMATS:
        raise EncodingError(f"update value_format must be one of {VALUE_FORMATS}")
    return UpdateMeta(
        task_id=md["task_id"],
        base_model_cid=md["base_model_cid"],
        executor_class=md["executor_class"],
        residual_sha256=md["residual_sha256"],
        value_format=md["value_format"],
    )


def _parse_shapes(raw: str) -> dict[str, tuple[int, ...]]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EncodingError(f"update 'shapes' metadata is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or not obj:
        raise EncodingError("update 'shapes' metadata must be a non-empty object")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, dims in obj.items():
        ok = isinstance(dims, list) and 1 <= len(dims) <= 8
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
        if not ok or "::" in key or math.prod(dims) > MAX_NUMEL:
            raise EncodingError(f"update shape for {key!r} is invalid: {dims!r}")
        shapes[key] = tuple(dims)
    return shapes
