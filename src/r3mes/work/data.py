"""Token datasets on disk, their train / held-out split, and shards of the training split.

File format (version 1), little-endian throughout::

    offset  size  field
    0       8     magic b"R3TOKDS\\0"
    8       4     version (u32) = 1
    12      4     dtype code (u32): 1 = uint16, 2 = uint32
    16      4     chunk_len (u32): tokens per chunk
    20      8     n_chunks (u64)
    28      32    tokenizer hash (SHA-256 of the tokenizer that produced the tokens)
    60      4     zero padding
    64      ...   n_chunks * chunk_len tokens, row-major

The token array is opened with `numpy.memmap`, so chunks stream from disk and a dataset larger
than memory works.

Split rule: chunk i is HELD-OUT iff ``i % HELDOUT_EVERY == HELDOUT_EVERY - 1`` (every tenth
chunk); all other chunks form the TRAINING split, in increasing order. The training split is
cut into `n_shards` contiguous, near-equal shards: shard s holds training positions
``[s * n // n_shards, (s + 1) * n // n_shards)``.

Shard assignment (the consensus rule in `r3mes.spec.shards`, which the ledger enforces): a
miner's shard starts at ``sha256(seed_u64_le || miner) mod n_shards`` (`preferred_shard`).
Collisions are resolved by linear probing over the shards already claimed this round
(`assign_shard(..., claimed=...)`), so miners get distinct shards while shards >= miners.
When every shard is claimed the preferred shard is reused; the task still differs (it names
the miner), so the batch order and the result differ too.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from r3mes.spec import shards as spec_shards
from r3mes.work.errors import DatasetError

MAGIC = b"R3TOKDS\0"
VERSION = 1
HEADER_SIZE = 64
HELDOUT_EVERY = 10
_HEADER = struct.Struct("<8sIIIQ32s4x")
_DTYPES: dict[int, np.dtype[np.unsignedinteger]] = {
    1: np.dtype("<u2"),
    2: np.dtype("<u4"),
}
_WRITE_BATCH_TOKENS = 1 << 20


class TextTokenizer(Protocol):
    """What `build_dataset` needs from a tokenizer (r3mes.model.tokenizer.Tokenizer fits)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...


def tokenizer_fingerprint(tokenizer: TextTokenizer) -> bytes:
    """SHA-256 identifying a tokenizer: its serialized JSON when it offers one.

    `r3mes.model.tokenizer.Tokenizer.to_json()` (or a `tokenizers.Tokenizer.to_str()`) is
    hashed; otherwise the vocabulary size and the encoding of a fixed probe text.
    """
    for attr in ("to_json", "to_str"):
        method = getattr(tokenizer, attr, None)
        if callable(method):
            return hashlib.sha256(str(method()).encode()).digest()
    probe = "def f(x):\n    return x + 1  # R3MES tokenizer probe: \u00e9\u4e2d"
    ids = tokenizer.encode(probe)
    blob = f"{tokenizer.vocab_size}|{tokenizer.eos_id}|{ids}".encode()
    return hashlib.sha256(blob).digest()


@dataclass(frozen=True)
class DatasetHeader:
    """The decoded header of a token dataset file."""

    dtype_code: int
    chunk_len: int
    n_chunks: int
    tokenizer_hash: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC, VERSION, self.dtype_code, self.chunk_len, self.n_chunks, self.tokenizer_hash
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dtype_code_for(vocab_size: int) -> int:
    return 1 if vocab_size <= 2**16 else 2


def build_dataset(
    texts: Iterable[str],
    tokenizer: TextTokenizer,
    *,
    chunk_len: int,
    out_path: Path,
) -> Path:
    """Tokenize `texts` (EOS after each) into fixed `chunk_len` chunks, written to `out_path`.

    Texts stream through; the trailing partial chunk is dropped. The file is written to a
    temporary name and renamed, so `out_path` is either the old file or the complete new one.
    """
    if not _is_int(chunk_len) or not 2 <= chunk_len <= 2**20:
        raise DatasetError(f"chunk_len must be an integer in [2, 2**20], got {chunk_len!r}")
    if not isinstance(out_path, str | os.PathLike):
        raise DatasetError(f"out_path must be a path, got {type(out_path).__name__}")
    code = _dtype_code_for(tokenizer.vocab_size)
    dtype = _DTYPES[code]
    eos = tokenizer.eos_id
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    pending: list[int] = []
    n_chunks = 0
    if not out_path.parent.is_dir():
        raise DatasetError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"\0" * HEADER_SIZE)
            for text in texts:
                if not isinstance(text, str):
                    raise DatasetError(f"texts must be strings, got {type(text).__name__}")
                pending.extend(tokenizer.encode(text))
                if eos is not None:
                    pending.append(eos)
                if len(pending) >= _WRITE_BATCH_TOKENS:
                    n_chunks += _flush(fh, pending, chunk_len, dtype, tokenizer.vocab_size)
            n_chunks += _flush(fh, pending, chunk_len, dtype, tokenizer.vocab_size)
            if n_chunks == 0:
                raise DatasetError(f"texts hold fewer than chunk_len={chunk_len} tokens")
            header = DatasetHeader(code, chunk_len, n_chunks, tokenizer_fingerprint(tokenizer))
            fh.seek(0)
            fh.write(header.pack())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except OSError as exc:
        raise DatasetError(f"cannot write dataset {out_path}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path


def _flush(
    fh: BinaryIO, pending: list[int], chunk_len: int, dtype: np.dtype[Any], vocab: int
) -> int:
    """Write the whole chunks in `pending` to `fh`, keep the remainder; returns chunks written."""
    n = len(pending) // chunk_len
    if n == 0:
        return 0
    arr = np.asarray(pending[: n * chunk_len], dtype=np.int64)
    if arr.min() < 0 or arr.max() >= vocab:
        raise DatasetError(f"tokenizer produced ids outside [0, {vocab})")
    fh.write(arr.astype(dtype).tobytes())
    del pending[: n * chunk_len]
    return n


class TokenDataset:
    """A read-only, memory-mapped token dataset file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        dtype = _DTYPES[self.header.dtype_code]
        self._tokens = np.memmap(
            self.path,
            dtype=dtype,
            mode="r",
            offset=HEADER_SIZE,
            shape=(self.header.n_chunks, self.header.chunk_len),
        )

    @property
    def chunk_len(self) -> int:
        return self.header.chunk_len

    def __len__(self) -> int:
        return self.header.n_chunks

    def chunk(self, index: int) -> npt.NDArray[np.int64]:
        """Chunk `index` as int64 (a copy; the file stays untouched)."""
        if not 0 <= index < len(self):
            raise DatasetError(f"chunk {index} out of range [0, {len(self)})")
        return np.asarray(self._tokens[index], dtype=np.int64)

    def chunks(self, indices: Sequence[int]) -> npt.NDArray[np.int64]:
        """Several chunks stacked, shape (len(indices), chunk_len)."""
        return (
            np.stack([self.chunk(int(i)) for i in indices])
            if indices
            else np.zeros((0, self.chunk_len), dtype=np.int64)
        )

    def train_indices(self) -> npt.NDArray[np.int64]:
        """Chunk indices of the training split (see module docstring)."""
        idx = np.arange(len(self), dtype=np.int64)
        keep: npt.NDArray[np.int64] = idx[idx % HELDOUT_EVERY != HELDOUT_EVERY - 1]
        return keep

    def heldout_indices(self) -> npt.NDArray[np.int64]:
        """Chunk indices of the held-out split (every tenth chunk)."""
        return np.arange(HELDOUT_EVERY - 1, len(self), HELDOUT_EVERY, dtype=np.int64)


def read_header(path: Path) -> DatasetHeader:
    """Read and validate the header of a dataset file, including the file size it implies."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_SIZE)
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc}") from exc
    if len(raw) < HEADER_SIZE:
        raise DatasetError(f"{path} is too short to be an R3MES token dataset")
    magic, version, code, chunk_len, n_chunks, tok_hash = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise DatasetError(f"{path} is not an R3MES token dataset (bad magic)")
    if version != VERSION:
        raise DatasetError(f"{path} has dataset version {version}; this node reads {VERSION}")
    if code not in _DTYPES or chunk_len < 2 or n_chunks < 1:
        raise DatasetError(f"{path} has an invalid header (dtype {code}, chunk_len {chunk_len})")
    expected = HEADER_SIZE + n_chunks * chunk_len * _DTYPES[code].itemsize
    if size != expected:
        raise DatasetError(
            f"{path} is {size} bytes but its header says {expected}; the file is truncated "
            "or corrupt - download it again"
        )
    return DatasetHeader(code, chunk_len, n_chunks, tok_hash)


@dataclass(frozen=True)
class Shard:
    """One miner's slice of a dataset's training split."""

    dataset: TokenDataset
    shard_index: int
    n_shards: int
    indices: tuple[int, ...]
    """Dataset chunk indices of this shard, increasing."""

    def __len__(self) -> int:
        return len(self.indices)


def shard_of(dataset: TokenDataset, *, shard_index: int, n_shards: int) -> Shard:
    """Shard `shard_index` of `n_shards` of the dataset's training split."""
    if not isinstance(dataset, TokenDataset):
        raise DatasetError(f"dataset must be a TokenDataset, got {type(dataset).__name__}")
    if not _is_int(n_shards) or not _is_int(shard_index):
        raise DatasetError(
            f"shard_index and n_shards must be integers, got {shard_index!r}, {n_shards!r}"
        )
    train = dataset.train_indices()
    n = len(train)
    if not 1 <= n_shards <= n:
        raise DatasetError(
            f"cannot cut {n} training chunks into {n_shards} shards; use at most {n} shards "
            "or a larger dataset"
        )
    if not 0 <= shard_index < n_shards:
        raise DatasetError(f"shard_index {shard_index} out of range [0, {n_shards})")
    lo, hi = shard_index * n // n_shards, (shard_index + 1) * n // n_shards
    return Shard(dataset, shard_index, n_shards, tuple(int(i) for i in train[lo:hi]))


def preferred_shard(*, seed: int, miner: str, n_shards: int) -> int:
    """The miner's first-choice shard; the rule itself lives in `r3mes.spec.shards`."""
    try:
        return spec_shards.preferred_shard(seed=seed, miner=miner, n_shards=n_shards)
    except spec_shards.RuleInputError as exc:
        raise DatasetError(str(exc)) from exc


def assign_shard(
    *, seed: int, miner: str, n_shards: int, claimed: frozenset[int] = frozenset()
) -> int:
    """The miner's shard, probed past `claimed`; the rule lives in `r3mes.spec.shards`."""
    try:
        return spec_shards.assign_shard(seed=seed, miner=miner, n_shards=n_shards, claimed=claimed)
    except spec_shards.RuleInputError as exc:
        raise DatasetError(str(exc)) from exc
