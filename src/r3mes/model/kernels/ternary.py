"""The native ternary matmul (`ternary.c`) as `torch.library` custom ops.

`ternary.c` (with `head.c`, the bfloat16 head that `head.py` wraps) is built by the package's
own `setup.py` into a plain shared library (no Python or torch headers) that `library` loads
with ctypes on first use.  Where it was not built or does not load, `available()` is False,
one warning says so, and BitLinear keeps its torch path.

Three ops, each giving the same bits on every instruction set and at every thread count:

* `r3mes::ternary_linear(x float32 (..., K), packed uint8 (ceil(N/4), K), weight_scale (1,),
  N) -> float32 (..., N)`: BitLinear's whole frozen forward (without bias) in one native call:
  per-token int8 activation quantization, `codes @ W.T` in int32, rescale; the same float32
  operations in the same order as the torch code it replaces (`bitlinear.quantize_activations`
  and the division by `input_scale * weight_scale`), so the same bits;
* `r3mes::ternary_matmul(x int8 (M, K), packed uint8 (ceil(N/4), K), N) -> int32 (M, N)`:
  `x @ W.T` with int32 accumulation, the integer core alone;
* `r3mes::ternary_matmul_t(g float32 (M, N), packed, K) -> float32 (M, K)`: `g @ W`, the input
  gradient, on the same packing, each element summed in one fixed order.

The instruction set is chosen per process: the best the CPU has, unless `set_isa` forces one
(the CLI maps `R3MES_TERNARY_ISA` to it; tests force each in turn).  Threads default to
`torch.get_num_threads()`; work is split by output rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from r3mes.model.errors import ModelError
from r3mes.model.kernels.library import (
    ISAS,
    REFERENCE,
    KernelUnavailable,
    available,
    best_isa,
    current_isa,
    need_library,
    set_isa,
    supported_isas,
)
from r3mes.model.kernels.library import check as _check
from r3mes.model.kernels.library import isa_index as _isa_index

__all__ = [
    "ISAS",
    "REFERENCE",
    "KernelUnavailable",
    "available",
    "best_isa",
    "current_isa",
    "linear_float",
    "linear_op",
    "matmul_int8",
    "matmul_t_float",
    "ops",
    "set_isa",
    "supported_isas",
]

TensorOp = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _check_packed(packed: torch.Tensor, rows_of: int, width: int) -> None:
    expected = ((rows_of + 3) // 4, width)
    if packed.dtype != torch.uint8 or tuple(packed.shape) != expected:
        raise ModelError(
            f"packed weight must be uint8 {expected}, got {packed.dtype} {tuple(packed.shape)}"
        )
    if packed.device.type != "cpu":
        raise ModelError("the native ternary kernel runs on CPU tensors only")


def matmul_int8(
    x: torch.Tensor,
    packed: torch.Tensor,
    out_features: int,
    *,
    isa: str | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """int32 (M, N) = x int8 (M, K) @ W.T, W (N, K) ternary packed (ceil(N/4), K)."""
    if x.dtype != torch.int8 or x.dim() != 2 or x.device.type != "cpu":
        raise ModelError(f"x must be a CPU int8 (M, K) tensor, got {x.dtype} {tuple(x.shape)}")
    _check_packed(packed, out_features, x.shape[1])
    lib = need_library()
    x, packed = x.contiguous(), packed.contiguous()
    out = torch.empty((x.shape[0], out_features), dtype=torch.int32)
    if x.shape[0] == 0:
        return out
    rc = lib.r3mes_ternary_matmul(
        x.data_ptr(), packed.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], out_features,
        _isa_index(isa), threads or torch.get_num_threads(),
    )  # fmt: skip
    _check(rc, "ternary matmul")
    return out


def linear_float(
    x: torch.Tensor,
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    out_features: int,
    *,
    isa: str | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """float32 (..., N): BitLinear's frozen forward (no bias) of x float32 (..., K), one call.

    Per row of x: int8 codes `clamp(round(x * 127 / max(max|x|, 1e-5)), -128, 127)`, their
    int32 product with W (N, K) ternary packed (ceil(N/4), K), divided by
    `input_scale * weight_scale`: bit for bit what `quantize_activations` and the division in
    `BitLinear` compute with torch ops, on every path and thread count.
    """
    if x.dtype != torch.float32 or x.dim() < 1 or x.device.type != "cpu":
        raise ModelError(
            f"x must be a CPU float32 (..., K) tensor, got {x.dtype} {tuple(x.shape)} on "
            f"{x.device.type}"
        )
    in_features = x.shape[-1]
    if in_features == 0:
        raise ModelError("x has no features (K = 0)")
    _check_packed(packed, out_features, in_features)
    if (
        weight_scale.dtype != torch.float32
        or weight_scale.numel() != 1
        or weight_scale.device.type != "cpu"
    ):
        raise ModelError(
            f"weight_scale must be one CPU float32 number, got {weight_scale.dtype} "
            f"{tuple(weight_scale.shape)}"
        )
    lib = need_library()
    x, packed, weight_scale = x.contiguous(), packed.contiguous(), weight_scale.contiguous()
    out = torch.empty((*x.shape[:-1], out_features), dtype=torch.float32)
    rows = x.numel() // in_features
    if rows == 0:
        return out
    rc = lib.r3mes_ternary_linear(
        x.data_ptr(), packed.data_ptr(), weight_scale.data_ptr(), out.data_ptr(), rows,
        in_features, out_features, _isa_index(isa), threads or torch.get_num_threads(),
    )  # fmt: skip
    _check(rc, "ternary linear")
    return out


def matmul_t_float(
    grad: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    *,
    isa: str | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """float32 (M, K) = grad float32 (M, N) @ W, W (N, K) ternary packed (ceil(N/4), K)."""
    if grad.dtype != torch.float32 or grad.dim() != 2 or grad.device.type != "cpu":
        raise ModelError(
            f"grad must be a CPU float32 (M, N) tensor, got {grad.dtype} {tuple(grad.shape)}"
        )
    _check_packed(packed, grad.shape[1], in_features)
    lib = need_library()
    grad, packed = grad.contiguous(), packed.contiguous()
    out = torch.empty((grad.shape[0], in_features), dtype=torch.float32)
    if grad.shape[0] == 0:
        return out
    rc = lib.r3mes_ternary_matmul_t(
        grad.data_ptr(), packed.data_ptr(), out.data_ptr(), grad.shape[0], in_features,
        grad.shape[1], _isa_index(isa), threads or torch.get_num_threads(),
    )  # fmt: skip
    _check(rc, "ternary input gradient")
    return out


@functools.cache
def ops() -> tuple[TensorOp, TensorOp]:
    """Register (once) and return the `r3mes::ternary_matmul` and `_t` custom ops.

    Their fake implementations give shapes and dtypes only, for `torch.compile` and meta
    tensors.  The ops use the process's current path and `torch.get_num_threads()`.
    """

    @torch.library.custom_op("r3mes::ternary_matmul", mutates_args=())
    def ternary_matmul(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
        return matmul_int8(x, packed, out_features)

    @ternary_matmul.register_fake
    def _(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
        return x.new_empty((x.shape[0], out_features), dtype=torch.int32)

    @torch.library.custom_op("r3mes::ternary_matmul_t", mutates_args=())
    def ternary_matmul_t(
        grad: torch.Tensor, packed: torch.Tensor, in_features: int
    ) -> torch.Tensor:
        return matmul_t_float(grad, packed, in_features)

    @ternary_matmul_t.register_fake
    def _(grad: torch.Tensor, packed: torch.Tensor, in_features: int) -> torch.Tensor:
        return grad.new_empty((grad.shape[0], in_features), dtype=torch.float32)

    return ternary_matmul, ternary_matmul_t


LinearOp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@functools.cache
def linear_op() -> LinearOp:
    """Register (once) and return the `r3mes::ternary_linear` custom op (`linear_float`).

    Its fake implementation gives the shape and dtype only (float32 (..., N)).  It uses the
    process's current path and `torch.get_num_threads()`.
    """

    @torch.library.custom_op("r3mes::ternary_linear", mutates_args=())
    def ternary_linear(
        x: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor, out_features: int
    ) -> torch.Tensor:
        return linear_float(x, packed, weight_scale, out_features)

    @ternary_linear.register_fake
    def _(
        x: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor, out_features: int
    ) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], out_features), dtype=torch.float32)

    return ternary_linear
