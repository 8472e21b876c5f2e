"""BitLinear: ternary weights (absmean), 8-bit per-token activations, 2-bit packing.

Two modes share one module:

* training (default): a float master `weight` is quantized on every forward with a
  straight-through estimator, so the model can be trained from scratch;
* frozen (`freeze()`): the weight is held only as `packed_weight` (uint8, four ternary values
  per byte, the layout of transformers' `integrations/bitnet.py`) plus `weight_scale`; it is
  never re-quantized and holds no gradient memory.  On CPU the forward is one call of the
  native ternary kernel (`r3mes.model.kernels.ternary.linear_float`): it quantizes the float32
  activations to int8 codes per token, sums codes x ternary weights in int32 straight on the
  packed bytes and rescales to float32, with the same float32 operations as
  `quantize_activations` and the division below (so the same bits, and no torch ops between
  the kernel calls of a decode step); the input gradient (LoRA training) runs the kernel's
  transposed twin.  Without the kernel (not built, another device, or `set_isa("reference")`) each
  forward unpacks a transient ternary copy and multiplies the integer codes in float32,
  which is exact too (every partial sum is an integer below 2**24), so both paths give the
  same bits.  `cache_unpacked(True)` keeps that copy for the torch path; `weight_bytes()`
  reports it when present.

`weight_scale` has the meaning it has in HF's packed checkpoints: `W ~= ternary / weight_scale`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from r3mes.model.errors import ModelError
from r3mes.model.kernels import ternary as kernels

VALUES_PER_BYTE = 4
SCALE_EPS = 1e-5
ACT_MAX = 127.0


def pack_ternary(t: torch.Tensor) -> torch.Tensor:
    """Pack a ternary tensor (values in {-1, 0, 1}) at 2 bits per value.

    Layout (HF `pack_weights`): with `rows = ceil(shape[0] / 4)`, row `r` of block `i` of the
    input goes into bits `2i..2i+1` of packed row `r`, stored as value + 1.
    """
    if t.dim() < 1 or t.shape[0] == 0:
        raise ModelError(f"cannot pack a tensor of shape {tuple(t.shape)}")
    values = t.to(torch.int8)
    if bool(((values < -1) | (values > 1)).any()) or not torch.equal(values.to(t.dtype), t):
        raise ModelError("pack_ternary expects values in {-1, 0, 1} only")
    rows = (t.shape[0] + VALUES_PER_BYTE - 1) // VALUES_PER_BYTE
    padded = torch.zeros((rows * VALUES_PER_BYTE, *t.shape[1:]), dtype=torch.uint8, device=t.device)
    padded[: t.shape[0]] = (values + 1).to(torch.uint8)
    blocks = padded.view(VALUES_PER_BYTE, rows, *t.shape[1:])
    packed = blocks[0] | (blocks[1] << 2) | (blocks[2] << 4) | (blocks[3] << 6)
    return packed.contiguous()


def unpack_ternary(
    packed: torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
    *,
    check: bool = True,
) -> torch.Tensor:
    """Inverse of `pack_ternary`: the ternary tensor of `shape` as `dtype`.

    `check=False` skips the scan for the invalid code 3; only for bytes already validated
    (a loaded `BitLinear` checks once in `load_packed`, not on every forward).
    """
    shape = tuple(shape)
    if packed.dtype != torch.uint8:
        raise ModelError(f"packed weights must be uint8, got {packed.dtype}")
    rows = (shape[0] + VALUES_PER_BYTE - 1) // VALUES_PER_BYTE if shape else 0
    if not shape or tuple(packed.shape) != (rows, *shape[1:]):
        raise ModelError(
            f"packed tensor of shape {tuple(packed.shape)} cannot hold a ternary tensor of {shape}"
        )
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device)
    shifts = shifts.view(VALUES_PER_BYTE, *([1] * packed.dim()))
    codes = (packed.unsqueeze(0) >> shifts) & 3  # (4, rows, ...)
    codes = codes.reshape(rows * VALUES_PER_BYTE, *shape[1:])[: shape[0]]
    if check and bool((codes == 3).any()):
        raise ModelError("packed weights hold the invalid 2-bit code 3")
    return codes.to(dtype) - 1


INVALID_CODE_CHUNK = 1 << 20
"""Bytes scanned at a time by `holds_invalid_code`: its temporaries stay small (a 2B model's
210 full-size temporaries left ~400 MB of freed but unreturned heap behind a load)."""


def holds_invalid_code(packed: torch.Tensor) -> bool:
    """True when a packed byte holds the code 3 (both bits of a pair set); no unpacking."""
    flat = packed.reshape(-1)
    for start in range(0, flat.numel(), INVALID_CODE_CHUNK):
        chunk = flat[start : start + INVALID_CODE_CHUNK]
        if bool(((chunk & (chunk >> 1)) & 0x55).any()):
            return True
    return False


def weight_quant_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-tensor absmean scale `1 / mean|W|` (HF's `weight_scale`), shape (1,)."""
    return (1.0 / weight.float().abs().mean().clamp(min=SCALE_EPS)).reshape(1)


def ternarize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoundClip(W * scale, -1, 1) and the scale: `W ~= ternary / scale`."""
    scale = weight_quant_scale(weight)
    return (weight.float() * scale).round().clamp(-1, 1), scale


class _WeightQuantSTE(torch.autograd.Function):
    """Fake-quantize weights to ternary; gradients pass straight through."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor) -> torch.Tensor:
        ternary, scale = ternarize(weight)
        return (ternary / scale).to(weight.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


class _ActQuantSTE(torch.autograd.Function):
    """Fake-quantize activations to 8 bits per token; gradients pass straight through."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        codes, scale = quantize_activations(x)
        return (codes / scale).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 codes (as float) and their scale `127 / max|x|`, shape (..., 1)."""
    xf = x.float()
    scale = ACT_MAX / xf.abs().amax(dim=-1, keepdim=True).clamp(min=SCALE_EPS)
    return (xf * scale).round().clamp(-ACT_MAX - 1, ACT_MAX), scale


MAX_EXACT_IN_FEATURES = (1 << 24) // 128
"""Widest input whose float32 sums of int8 codes x ternary stay exact integers (2**24 / 128)."""


def _uses_kernel(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and kernels.current_isa() != kernels.REFERENCE


def _frozen_forward(x: torch.Tensor, layer: BitLinear) -> torch.Tensor:
    """(codes @ W.T) / (input_scale * weight_scale), without bias, in x's dtype.

    The kernel path is one native call (`kernels.linear_float`; under `torch.compile` its
    custom op `r3mes::ternary_linear`, whose dispatch costs more than the call itself at
    batch 1); the torch path quantizes with `quantize_activations` and multiplies the
    integer codes in float32.  Both give the bits of the torch ops written here.
    """
    packed = layer._buffer("packed_weight")
    weight_scale = layer._buffer("weight_scale")
    if _uses_kernel(x):
        xf = x if x.dtype == torch.float32 else x.float()
        if torch.compiler.is_compiling():
            y = kernels.linear_op()(xf, packed, weight_scale, layer.out_features)
        else:
            y = kernels.linear_float(xf, packed, weight_scale, layer.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)
    codes, input_scale = quantize_activations(x)  # (..., K) integer-valued, (..., 1)
    acc = F.linear(codes, layer.ternary_weight().to(x.device))
    return (acc / (input_scale * weight_scale)).to(x.dtype)


class _FrozenTernaryLinear(torch.autograd.Function):
    """y = (codes @ W.T) / (input_scale * weight_scale), as transformers' packed BitLinear.

    `codes @ W.T` is an exact integer on both paths: the native kernel sums in int32; the
    torch path sums integer-valued float32 below 2**24 (`_frozen_forward`).  A forward that
    needs no gradient skips this Function (`BitLinear.forward`).  The backward is the
    straight-through
    estimator of the quantized input: grad_x = (grad_y / weight_scale) @ W, so LoRA layers
    below this one receive the gradient of the quantized forward.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: BitLinear) -> torch.Tensor:
        ctx.layer = layer
        return _frozen_forward(x, layer)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        layer: BitLinear = ctx.layer
        g = grad_y.float() / layer._buffer("weight_scale")
        if _uses_kernel(g):
            flat = g.reshape(-1, layer.out_features).contiguous()
            packed = layer._buffer("packed_weight")
            # the custom op only under torch.compile: its eager wrapper imports torch._dynamo
            matmul_t = kernels.ops()[1] if torch.compiler.is_compiling() else kernels.matmul_t_float
            grad_x = matmul_t(flat, packed, layer.in_features)  # (M, K) float32
            grad_x = grad_x.view(*grad_y.shape[:-1], layer.in_features)
        else:
            grad_x = g @ layer.ternary_weight().to(g.device)
        return grad_x.to(grad_y.dtype), None


class BitLinear(nn.Module):
    """A linear layer with ternary weights and 8-bit activations (BitNet b1.58)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ModelError(f"BitLinear needs positive sizes, got {in_features}x{out_features}")
        if in_features > MAX_EXACT_IN_FEATURES:
            raise ModelError(
                f"BitLinear in_features {in_features} exceeds {MAX_EXACT_IN_FEATURES}, where "
                "sums of int8 codes would no longer be exact in float32"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._unpacked_cache: torch.Tensor | None = None
        self._keep_unpacked = False
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @property
    def frozen(self) -> bool:
        """True once the weight is held packed (see `freeze`)."""
        return self.weight is None

    def freeze(self) -> None:
        """Quantize once and hold the weight packed at 2 bits; drops the float master."""
        if self.weight is None:
            return
        with torch.no_grad():
            ternary, scale = ternarize(self.weight)
            self.load_packed(pack_ternary(ternary), scale)

    def load_packed(
        self, packed: torch.Tensor, weight_scale: torch.Tensor, *, copy: bool = True
    ) -> None:
        """Install an already packed ternary weight (e.g. from a checkpoint); enters frozen mode.

        `copy=False` holds `packed` itself (the loader's tensors, fresh or memory-mapped from
        the checkpoint file, which nothing else writes): no second copy at load.
        """
        rows = (self.out_features + VALUES_PER_BYTE - 1) // VALUES_PER_BYTE
        if packed.dtype != torch.uint8 or tuple(packed.shape) != (rows, self.in_features):
            raise ModelError(
                f"packed weight must be uint8 of shape {(rows, self.in_features)}, "
                f"got {packed.dtype} {tuple(packed.shape)}"
            )
        if weight_scale.numel() != 1 or not bool(torch.isfinite(weight_scale).all()):
            raise ModelError("weight_scale must be one finite number")
        if holds_invalid_code(packed):
            raise ModelError("packed weights hold the invalid 2-bit code 3")
        self.weight = None
        held = packed.detach()
        self.register_buffer("packed_weight", held.clone() if copy else held.contiguous())
        self.register_buffer("weight_scale", weight_scale.detach().float().reshape(1).clone())
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self._unpacked_cache = None

    def cache_unpacked(self, enabled: bool) -> None:
        """Keep (or drop) an unpacked float ternary copy for faster frozen forwards."""
        self._keep_unpacked = enabled
        if not enabled:
            self._unpacked_cache = None

    def ternary_weight(self) -> torch.Tensor:
        """The ternary weight (values in {-1, 0, 1}) as float32, shape (out, in)."""
        if self.weight is not None:
            return ternarize(self.weight.detach())[0]
        if self._unpacked_cache is not None:
            return self._unpacked_cache
        packed = self._buffer("packed_weight")
        ternary = unpack_ternary(packed, (self.out_features, self.in_features), check=False)
        if self._keep_unpacked:
            self._unpacked_cache = ternary
        return ternary

    def scale(self) -> torch.Tensor:
        """The weight scale (`W ~= ternary / scale`), shape (1,)."""
        if self.weight is not None:
            return weight_quant_scale(self.weight.detach())
        return self._buffer("weight_scale")

    def weight_bytes(self) -> int:
        """Bytes held for the weight body: packed bytes + scale (+ cached copy), or the master."""
        if self.weight is not None:
            return self.weight.numel() * self.weight.element_size()
        held = self._buffer("packed_weight").numel() + self._buffer("weight_scale").numel() * 4
        if self._unpacked_cache is not None:
            held += self._unpacked_cache.numel() * self._unpacked_cache.element_size()
        return int(held)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            w = _WeightQuantSTE.apply(self.weight)  # type: ignore[no-untyped-call]
            xq = _ActQuantSTE.apply(x)  # type: ignore[no-untyped-call]
            y: torch.Tensor = F.linear(xq, w)
        elif torch.is_grad_enabled() and x.requires_grad:
            y = _FrozenTernaryLinear.apply(x, self)  # type: ignore[no-untyped-call]
        else:  # serving and other no-grad forwards: no autograd node to build
            y = _frozen_forward(x, self)
        if self.bias is not None:
            y = y + self.bias
        return y

    def _buffer(self, name: str) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None:
            raise ModelError(f"BitLinear has no {name} buffer; call freeze() or load_packed()")
        return buf

    def extra_repr(self) -> str:
        mode = "frozen-packed" if self.frozen else "training"
        return f"in={self.in_features}, out={self.out_features}, {mode}"
