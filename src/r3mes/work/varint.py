"""Sorted positions as LEB128 varints of their gaps: the index part of a sparse update.

Positions ``p_0 < p_1 < ...`` are stored as gaps ``g_0 = p_0`` and ``g_i = p_i - p_{i-1} - 1``
(never negative, so any byte string that decodes gives strictly increasing positions), each
gap as an unsigned LEB128 varint: 7 bits per byte, low bits first, high bit set on every
byte but the last. At 1-5 % density most gaps are below 128, so an index costs one byte
instead of four.

Canonical: a varint has no redundant high zero groups (its last byte is non-zero unless it
is the single byte 0x00), is at most `MAX_VARINT_BYTES` long, and the string ends on a final
byte. `decode_positions` rejects anything else, so one position list has one encoding.
Both directions are vectorised (numpy): a 2B-parameter update at 1 % holds ~10^7 indices.
"""

from __future__ import annotations

import numpy as np

from r3mes.work.errors import EncodingError

MAX_VARINT_BYTES = 5
"""35 bits: enough for any position below 2**31 (`r3mes.work.encoding.MAX_NUMEL`)."""


def encode_positions(positions: np.ndarray) -> np.ndarray:
    """The uint8 varint encoding of strictly increasing non-negative int64 `positions`."""
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim != 1:
        raise EncodingError("positions must be a 1-D array")
    if pos.size == 0:
        return np.zeros(0, dtype=np.uint8)
    gaps = np.diff(pos, prepend=np.int64(-1)) - 1
    if int(gaps.min()) < 0:
        raise EncodingError("positions must be non-negative and strictly increasing")
    if int(gaps.max()) >= 1 << (7 * MAX_VARINT_BYTES):
        raise EncodingError(f"a gap does not fit {MAX_VARINT_BYTES} varint bytes")
    nbytes = np.ones(gaps.size, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES):
        nbytes += gaps >= (1 << (7 * j))
    starts = np.cumsum(nbytes) - nbytes
    out = np.zeros(int(nbytes.sum()), dtype=np.uint8)
    for j in range(MAX_VARINT_BYTES):
        has = nbytes > j
        group = (gaps[has] >> (7 * j)) & 0x7F
        more = np.where(nbytes[has] > j + 1, 0x80, 0)
        out[starts[has] + j] = (group | more).astype(np.uint8)
    return out


def decode_positions(data: np.ndarray, *, limit: int) -> np.ndarray:
    """The int64 positions encoded in uint8 `data`; each must be below `limit`.

    Raises `EncodingError` for a truncated, over-long or non-minimal varint, or a position
    at or past `limit`.
    """
    b = np.asarray(data)
    if b.dtype != np.uint8 or b.ndim != 1:
        raise EncodingError("varint data must be a 1-D uint8 array")
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b[-1] & 0x80:
        raise EncodingError("varint index data is truncated (last byte continues)")
    ends = np.flatnonzero((b & 0x80) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > MAX_VARINT_BYTES:
        raise EncodingError(f"a varint is longer than {MAX_VARINT_BYTES} bytes")
    if bool(((lengths > 1) & (b[ends] == 0)).any()):
        raise EncodingError("a varint is not minimal (redundant zero high byte)")
    gaps = np.zeros(ends.size, dtype=np.int64)
    for j in range(MAX_VARINT_BYTES):
        has = lengths > j
        gaps[has] |= (b[starts[has] + j].astype(np.int64) & 0x7F) << (7 * j)
    if int(gaps.max()) >= limit:  # also bounds the cumulative sum below
        raise EncodingError(f"an index gap reaches past the {limit} entries of the layout")
    positions = np.cumsum(gaps + 1) - 1
    if int(positions[-1]) >= limit:
        raise EncodingError(f"indices fall outside the {limit} entries of the layout")
    return positions
