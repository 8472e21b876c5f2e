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

The residual is a pure function of the miner's own *accepted* history, so a validator replays
it exactly (see `r3mes.work.verify`): it is an input of verification, and a miner that used a
different residual ships different bytes, which re-execution catches. A rejected round does
not advance the residual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from r3mes.work.errors import CompressionError
from r3mes.work.task import PPM, VALUE_FORMATS

Tensors = dict[str, torch.Tensor]
_FP16_MAX = 65504.0


@dataclass(frozen=True)
class SparseTensor:
    """The kept entries of one tensor."""

    shape: tuple[int, ...]
    """Shape of the dense tensor."""
    indices: torch.Tensor
    """int32 flat indices, strictly increasing."""
    values: torch.Tensor
    """float16 values, or int8 codes when `scale` is set."""
    scale: torch.Tensor | None = None
    """float32 scalar for int8 codes; None for fp16 values."""

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
    if value_format not in VALUE_FORMATS:
        raise CompressionError(f"value_format must be one of {VALUE_FORMATS}")
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


def compress(
    update: Mapping[str, torch.Tensor], *, topk_ppm: int, value_format: str
) -> dict[str, SparseTensor]:
    """Compress every tensor of `update` (keys in sorted order)."""
    return {
        k: compress_tensor(update[k], topk_ppm=topk_ppm, value_format=value_format)
        for k in sorted(update)
    }


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
) -> tuple[dict[str, SparseTensor], Tensors]:
    """(compressed, next residual) for `raw` plus the carried `residual` (None = zeros)."""
    res = zeros_like_state(raw) if residual is None else residual
    check_same_layout(raw, res, what="residual")
    acc = {k: raw[k].to(torch.float32) + res[k].to(torch.float32) for k in sorted(raw)}
    sparse = compress(acc, topk_ppm=topk_ppm, value_format=value_format)
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
