"""Canonical safetensors: one byte string per (tensors, metadata), readable by `safetensors`.

The `safetensors` library does not promise a byte-stable header (metadata is a hash map), so
hashed and signed artifacts are written here instead, in the same file format with every
free choice fixed:

* header JSON with sorted keys, no whitespace, ASCII escapes, "__metadata__" always present;
* tensor data laid out in sorted-name order, contiguous, little-endian, C order;
* header padded with spaces to a multiple of 8 bytes (as the reference writer does).

`load_canonical` parses with size limits and rejects any input whose re-encoding differs, so
one logical value has exactly one accepted encoding. No pickle is involved anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping

import numpy as np
import torch

from r3mes.work.boundedjson import parse_json
from r3mes.work.errors import EncodingError

MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_BYTES = 64 << 20
MAX_HEADER_DEPTH = 3
"""A header is {name: {"shape": [...], ...}}: three levels; anything deeper is rejected."""
MAX_DIMS = 8
"""Most dimensions a tensor may have (updates are 1-D, LoRA states 2-D)."""
MAX_ELEMENTS = 1 << 31
"""Bound on the product of a shape's dimensions, zeros counted as ones: torch computes its
strides from that product, so `[0, 2**47, 2**47]` (no data at all) would overflow them."""

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.int64: "I64",
}
_NAME_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}


def dump_canonical(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Encode `tensors` and string `metadata` canonically (see module docstring)."""
    _check_dump_inputs(tensors, metadata)
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _DTYPE_NAMES:
            raise EncodingError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        _check_shape(name, list(t.shape))
        arr = t.detach().cpu().contiguous().numpy()
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _check_dump_inputs(tensors: object, metadata: object) -> None:
    if not isinstance(tensors, Mapping) or not isinstance(metadata, Mapping):
        raise EncodingError("tensors and metadata must be mappings")
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise EncodingError(f"tensor names must be strings other than '__metadata__': {name!r}")
        if not isinstance(t, torch.Tensor):
            raise EncodingError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EncodingError(f"metadata keys and values must be strings: {key!r}: {value!r}")


def load_canonical(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Decode canonical bytes into (tensors, metadata); raises `EncodingError` otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError("encoded tensors must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise EncodingError(f"encoding is {len(data)} bytes, over the {max_bytes}-byte limit")
    if len(data) < 8:
        raise EncodingError("encoding is truncated: no header length")
    (head_len,) = struct.unpack("<Q", data[:8])
    if head_len > MAX_HEADER_BYTES or 8 + head_len > len(data):
        raise EncodingError(f"encoding is truncated or corrupt: header length {head_len}")
    try:
        text = data[8 : 8 + head_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise EncodingError(f"encoding header is not ASCII: {exc}") from exc
    header = parse_json(
        text, max_depth=MAX_HEADER_DEPTH, error=EncodingError, what="encoding header"
    )
    if not isinstance(header, dict):
        raise EncodingError("encoding header must be a JSON object")
    metadata = _parse_metadata(header.pop("__metadata__", None))
    body = data[8 + head_len :]
    tensors = {name: _parse_tensor(name, spec, body) for name, spec in header.items()}
    if dump_canonical(tensors, metadata) != data:
        raise EncodingError("encoding is not canonical (layout, order, padding or trailing data)")
    return tensors, metadata


def _parse_metadata(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise EncodingError("encoding '__metadata__' must be an object of strings")
    return dict(raw)


def _parse_tensor(name: str, spec: object, body: bytes) -> torch.Tensor:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise EncodingError(f"tensor {name!r}: header entry must have dtype, shape, data_offsets")
    dtype = _NAME_DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    shape, offsets = spec["shape"], spec["data_offsets"]
    if dtype is None:
        raise EncodingError(f"tensor {name!r}: unsupported dtype {spec['dtype']!r}")
    if not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
        raise EncodingError(f"tensor {name!r}: shape and data_offsets must be integer lists")
    _check_shape(name, shape)
    begin, end = offsets
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    if not 0 <= begin <= end <= len(body) or end - begin != numel * itemsize:
        raise EncodingError(f"tensor {name!r}: data offsets {offsets} do not fit the payload")
    if numel == 0:
        return torch.zeros(shape, dtype=dtype)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype.newbyteorder("<")
    flat = np.frombuffer(body[begin:end], dtype=np_dtype).astype(np_dtype.newbyteorder("="))
    return torch.from_numpy(flat.copy()).reshape(shape)


def _check_shape(name: str, shape: list[int]) -> None:
    """Bound rank and size before anything is allocated (torch allows 64 dims and raises
    untyped errors past its own limits)."""
    if len(shape) > MAX_DIMS:
        raise EncodingError(f"tensor {name!r} has {len(shape)} dimensions; at most {MAX_DIMS}")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise EncodingError(
            f"tensor {name!r}: shape {shape} spans over {MAX_ELEMENTS} elements "
            "(zero dimensions counted as one)"
        )


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**48 for v in value
    )


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the canonical encoding of `tensors` with no metadata."""
    return hashlib.sha256(dump_canonical(tensors, {})).hexdigest()
