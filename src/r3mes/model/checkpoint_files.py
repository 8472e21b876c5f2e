"""The files of a checkpoint folder, read without torch: config.json, the safetensors shards.

`checkpoint` builds torch models from them; `torchfree` decodes straight from the mapped
bytes.  safetensors is a plain format (an 8-byte little-endian header length, a JSON header
of dtypes, shapes and byte offsets, then the raw tensor bytes), so `map_safetensors` reads
the header itself, checks every entry against the file and returns read-only numpy views of
a memory map: nothing is copied, nothing is unpickled, and bfloat16 (which numpy has no type
for) comes back as its raw uint16 bits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from r3mes.model.config import BitNetConfig
from r3mes.model.errors import CheckpointError, ConfigError
from r3mes.model.quantization import BitNetQuantization, parse_quantization

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 1024 * 1024
FLOAT_CODES = frozenset({"F16", "BF16", "F32", "F64"})
"""safetensors dtype codes of floating-point tensors."""
MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The largest safetensors header read (the format's own reference reader's limit)."""

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits: widen with `bf16_to_float32`
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}


def read_config_json(directory: Path) -> dict[str, Any]:
    """`directory/config.json` as a dict (bounded size, valid JSON object)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(path, "missing; a checkpoint folder needs config.json")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(path, f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, f"must hold a JSON object, got {type(data).__name__}")
    return data


def load_config(directory: Path) -> tuple[BitNetConfig, BitNetQuantization | None]:
    """Read and validate `directory/config.json`: the architecture and its quantization."""
    data = read_config_json(directory)
    try:
        return BitNetConfig.from_dict(data), parse_quantization(data.get("quantization_config"))
    except ConfigError as exc:
        raise CheckpointError(directory / CONFIG_FILE, str(exc)) from exc


def recorded_name(directory: Path | str) -> str:
    """The model name a checkpoint records (`_name_or_path` in config.json), else its folder's."""
    directory = Path(directory)
    data = read_config_json(directory)
    for key in ("_name_or_path", "name_or_path"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return directory.resolve().name


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files: the shards its index names, else model.safetensors."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(index, f"malformed shard index ({exc})") from exc
        files = [directory / n for n in names]
        if any(not isinstance(n, str) or Path(n).name != n for n in names):
            raise CheckpointError(index, "shard names must be plain file names")
    else:
        files = [directory / WEIGHTS_FILE]
    for file in files:
        if not file.is_file():
            raise CheckpointError(file, "missing; the checkpoint has no weights file")
    return files


def map_safetensors(file: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (safetensors dtype code, read-only view) of every tensor in `file`, memory-mapped.

    The header is untrusted: a size past the file or `MAX_HEADER_BYTES`, malformed JSON, an
    unknown dtype, a shape that does not match its byte range, or a range outside the data or
    overlapping another is a `CheckpointError` naming the file.
    """
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(file, "truncated safetensors file (no header length)")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(file, f"safetensors header length {header_len} is invalid")
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(file, f"cannot read ({exc})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(file, f"corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(file, "corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    data_len = size - data_start
    spans: list[tuple[int, int, str]] = []
    entries: list[tuple[str, str, tuple[int, ...], int, int]] = []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(file, name, entry)
        if end > data_len:
            raise CheckpointError(file, f"tensor {name} runs past the end of the file")
        spans.append((begin, end, name))
        entries.append((name, dtype, shape, begin, end))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise CheckpointError(file, f"tensors {first} and {second} overlap")
    if not entries:
        return {}
    if data_len == 0:  # only empty tensors: nothing to map (mmap refuses a length of 0)
        mapped: np.ndarray = np.zeros(0, dtype=np.uint8)
    else:
        mapped = np.memmap(file, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,))
    return {
        name: (dtype, mapped[begin:end].view(NUMPY_DTYPES[dtype]).reshape(shape))
        for name, dtype, shape, begin, end in entries
    }


def _entry(file: Path, name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise CheckpointError(file, f"tensor {name}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in NUMPY_DTYPES:
        raise CheckpointError(file, f"tensor {name}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CheckpointError(file, f"tensor {name}: malformed shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(file, f"tensor {name}: malformed data_offsets {offsets!r}")
    if offsets[1] - offsets[0] != math.prod(shape) * NUMPY_DTYPES[dtype].itemsize:
        raise CheckpointError(file, f"tensor {name}: {offsets} does not hold shape {shape}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 raw bits (uint16): exact (a bfloat16 is a float32's top half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """bfloat16 raw bits (uint16) of finite float32 values, rounded to nearest, ties to even
    (as torch's `.to(torch.bfloat16)`)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)
