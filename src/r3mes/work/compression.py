"""Top-k sparsification with error feedback, deterministic to the bit.

A miner ships, per LoRA tensor, the k largest-magnitude entries of ``raw + residual``
(k = max(1, numel * topk_ppm // 10**6)); ties are broken by flat index (a stable sort of
``-|v|``), so every implementation picks the same entries. Kept values travel as fp16, or as
int8 with one fp32 scale per tensor (``scale = max|v| / 127``, round-half-to-even).

Error feedback: what was not shipped is kept and added next round::

    acc_r        = raw_r + residual_{r-1}           (residual_0 = zeros)
    compressed_r = topk(acc_r)
    residual_r   = acc_r - decompress(compressed_r)

With int8 values the quantisation error lands in the residual too, so it is not lost either.

Seeded sign ("sign" value format): instead of the top-k, each tensor keeps the entries of a
random index set that the ROUND seed picks (`seeded_positions`: k = max(1, numel * ppm //
10**6) entries per tensor, the same set for every miner of the round, so the update carries
no indices at all), and each kept entry travels as one sign bit: the decoded value is
``sign * scale`` with ``scale`` the mean magnitude of the tensor's kept entries (exactly
summed with `math.fsum`, rounded to fp16). Error feedback carries both what was not picked
and the sign quantisation error, so over rounds every entry is shipped. This is scaled-sign
compression with error feedback (Karimireddy et al. 2019) on a random-k set shared by the
round (as in sparse-random-subspace schemes), at one bit per kept entry.

The residual is a pure function of the miner's own *accepted* history, so a validator replays
it exactly (see `r3mes.work.verify`): it is an input of verification, and a miner that used a
different residual ships different bytes, which re-execution catches. A rejected round does
not advance the residual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from r3mes.work.errors import CompressionError
from r3mes.work.task import PPM

Tensors = dict[str, torch.Tensor]
_FP16_MAX = 65504.0
TOPK_FORMATS = ("fp16", "int8")
"""Value formats of top-k updates (kept positions travel as varint indices)."""
SEEDED_FORMATS = ("sign",)
"""Value formats whose kept positions the round seed picks (no indices on the wire)."""
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class SparseTensor:
    """The kept entries of one tensor."""

    shape: tuple[int, ...]
    """Shape of the dense tensor."""
    indices: torch.Tensor
    """int32 flat indices, strictly increasing."""
    values: torch.Tensor
    """float16 values, or int8 codes when `scale` is set (signs: -1 or +1)."""
    scale: torch.Tensor | None = None
    """float32 scalar for int8 codes and signs; None for fp16 values."""

    def dense(self) -> torch.Tensor:
        """The dense float32 tensor (zeros where nothing was kept)."""
        out = torch.zeros(math.prod(self.shape), dtype=torch.float32)
        vals = self.values.to(torch.float32)
        if self.scale is not None:
            vals = vals * self.scale.to(torch.float32)
        out[self.indices.to(torch.int64)] = vals
        return out.reshape(self.shape)


def topk_count(numel: int, topk_ppm: int) -> int:
    """How many entries top-k keeps of `numel` at `topk_ppm` parts per million."""
    if not 1 <= topk_ppm <= PPM:
        raise CompressionError(f"topk_ppm must be in [1, {PPM}], got {topk_ppm}")
    return max(1, numel * topk_ppm // PPM)


def compress_tensor(t: torch.Tensor, *, topk_ppm: int, value_format: str) -> SparseTensor:
    """Keep the top-k entries of `t` by magnitude (ties: lower flat index first)."""
    if value_format not in TOPK_FORMATS:
        raise CompressionError(f"top-k value_format must be one of {TOPK_FORMATS}")
    flat = t.detach().to(torch.float32).reshape(-1)
    if flat.numel() == 0 or not bool(torch.isfinite(flat).all()):
        raise CompressionError("cannot compress an empty tensor or one with inf/nan entries")
    k = topk_count(flat.numel(), topk_ppm)
    order = torch.sort(-flat.abs(), stable=True).indices[:k]
    idx = torch.sort(order).values
    kept = flat[idx]
    if value_format == "fp16":
        if float(kept.abs().max()) > _FP16_MAX:
            raise CompressionError("update entries exceed the fp16 range; use value_format int8")
        return SparseTensor(tuple(t.shape), idx.to(torch.int32), kept.to(torch.float16))
    amax = float(kept.abs().max())
    scale = torch.tensor(amax / 127.0 if amax > 0 else 1.0, dtype=torch.float32)
    codes = torch.round(kept / scale).clamp(-127, 127).to(torch.int8)
    return SparseTensor(tuple(t.shape), idx.to(torch.int32), codes, scale)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic, the same everywhere)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seeded_positions(*, seed: int, offset: int, numel: int, keep_ppm: int) -> np.ndarray:
    """The sorted flat positions (int64) the round `seed` picks in one tensor.

    The tensor occupies flat positions ``offset .. offset + numel - 1`` of the layout laid end
    to end (sorted keys); each position p gets the key ``splitmix64(splitmix64(seed) ^ p)``
    and the k = `topk_count` positions with the smallest keys are kept (ties: lower
    position). Integer arithmetic only, so every node derives the same set.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _U64:
        raise CompressionError(f"index seed must be an unsigned 64-bit integer, got {seed!r}")
    if numel <= 0 or offset < 0:
        raise CompressionError("a seeded index set needs a non-empty tensor")
    k = topk_count(numel, keep_ppm)
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([seed], dtype=np.uint64))[0]
        keys = _splitmix64(np.arange(offset, offset + numel, dtype=np.uint64) ^ base)
    chosen = np.argsort(keys, kind="stable")[:k]
    return np.sort(chosen).astype(np.int64)


def fp16_scale(mean_abs: float) -> float:
    """`mean_abs` rounded to the nearest fp16 (ties to even), as a Python float."""
    if not math.isfinite(mean_abs) or mean_abs > _FP16_MAX:
        raise CompressionError("update entries exceed the fp16 range of a sign scale")
    return float(np.float16(mean_abs))


def compress_sign(t: torch.Tensor, *, positions: np.ndarray) -> SparseTensor:
    """Keep `positions` of `t` as signs (-1/+1) with the fp16 mean magnitude as scale."""
    flat = t.detach().to(torch.float32).reshape(-1)
    if flat.numel() == 0 or not bool(torch.isfinite(flat).all()):
        raise CompressionError("cannot compress an empty tensor or one with inf/nan entries")
    idx = torch.from_numpy(np.asarray(positions, dtype=np.int64))
    kept = flat[idx]
    scale = fp16_scale(math.fsum(abs(v) for v in kept.tolist()) / kept.numel())
    codes = torch.where(kept < 0, -1, 1).to(torch.int8)
    if scale == 0.0:
        codes = torch.ones_like(codes)  # canonical: a zero scale carries no signs
    return SparseTensor(
        tuple(t.shape), idx.to(torch.int32), codes, torch.tensor(scale, dtype=torch.float32)
    )


def compress(
    update: Mapping[str, torch.Tensor],
    *,
    topk_ppm: int,
    value_format: str,
    index_seed: int | None = None,
) -> dict[str, SparseTensor]:
    """Compress every tensor of `update` (keys in sorted order).

    Seeded formats ("sign") need `index_seed` (the round seed); the others ignore it.
    """
    if value_format not in (*TOPK_FORMATS, *SEEDED_FORMATS):
        raise CompressionError(f"value_format must be one of {(*TOPK_FORMATS, *SEEDED_FORMATS)}")
    if value_format not in SEEDED_FORMATS:
        return {
            k: compress_tensor(update[k], topk_ppm=topk_ppm, value_format=value_format)
            for k in sorted(update)
        }
    if index_seed is None:
        raise CompressionError(f"value format {value_format!r} needs the round's index seed")
    out: dict[str, SparseTensor] = {}
    offset = 0
    for k in sorted(update):
        numel = update[k].numel()
        pos = seeded_positions(seed=index_seed, offset=offset, numel=numel, keep_ppm=topk_ppm)
        out[k] = compress_sign(update[k], positions=pos)
        offset += numel
    return out


def decompress(sparse: Mapping[str, SparseTensor]) -> Tensors:
    """Dense float32 tensors of a compressed update."""
    return {k: sparse[k].dense() for k in sorted(sparse)}


def zeros_like_state(state: Mapping[str, torch.Tensor]) -> Tensors:
    """A zero residual matching `state`'s keys and shapes (a miner's first round)."""
    return {k: torch.zeros(state[k].shape, dtype=torch.float32) for k in sorted(state)}


def compress_with_feedback(
    raw: Mapping[str, torch.Tensor],
    residual: Mapping[str, torch.Tensor] | None,
    *,
    topk_ppm: int,
    value_format: str,
    index_seed: int | None = None,
) -> tuple[dict[str, SparseTensor], Tensors]:
    """(compressed, next residual) for `raw` plus the carried `residual` (None = zeros)."""
    res = zeros_like_state(raw) if residual is None else residual
    check_same_layout(raw, res, what="residual")
    acc = {k: raw[k].to(torch.float32) + res[k].to(torch.float32) for k in sorted(raw)}
    sparse = compress(acc, topk_ppm=topk_ppm, value_format=value_format, index_seed=index_seed)
    dense = decompress(sparse)
    return sparse, {k: acc[k] - dense[k] for k in sorted(acc)}


def check_same_layout(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *, what: str
) -> None:
    """Raise `CompressionError` unless `a` and `b` have the same keys and shapes."""
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[:3]
        raise CompressionError(f"{what} keys do not match the update's (e.g. {missing})")
    for k in a:
        if tuple(a[k].shape) != tuple(b[k].shape):
            raise CompressionError(
                f"{what} tensor {k!r} has shape {tuple(b[k].shape)}, expected {tuple(a[k].shape)}"
            )
