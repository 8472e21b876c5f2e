"""The language-model head on a bfloat16 weight (`head.c`), as `torch.library` custom ops.

A 2B-4T checkpoint stores its tied embedding / head in bfloat16 (128256 x 2560: 656 MB).
Held as float32 it doubles, and is half of the bytes one decoded token reads.  These ops keep
the weight as stored and widen each bfloat16 to float32 in registers (exact), accumulating in
float32, so logits and gradients stay float32 while the head costs 2 bytes a weight:

* `r3mes::bf16_linear(x float32 (..., K), weight bfloat16 (N, K)) -> float32 (..., N)`, with
  autograd for x (the weight is frozen);
* `r3mes::bf16_matmul_t(grad float32 (M, N), weight bfloat16 (N, K)) -> float32 (M, K)`, the
  input gradient.

Each output element is summed in one fixed order (see `head.c`), so both give the same bits
on every instruction set, at every thread count and in every process - unlike a BLAS matmul,
whose order depends on the CPU.  They use the path `ternary.set_isa` chose and
`torch.get_num_threads()`; where the native library is missing, or the path is forced to
`reference`, `logits` computes the same product with torch (chunked, never a float32 copy of
the whole weight).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from r3mes.model.errors import ModelError
from r3mes.model.kernels import library

REFERENCE_CHUNK = 8192
"""Head rows widened to float32 at a time on the torch path (8192 x 2560: 84 MB)."""


def _check_weight(
    weight: torch.Tensor, *, in_features: int | None = None, out_features: int | None = None
) -> None:
    if weight.dtype != torch.bfloat16 or weight.dim() != 2 or weight.device.type != "cpu":
        raise ModelError(
            f"head weight must be a CPU bfloat16 (N, K) tensor, got {weight.dtype} "
            f"{tuple(weight.shape)} on {weight.device.type}"
        )
    if in_features is not None and weight.shape[1] != in_features:
        raise ModelError(
            f"head weight has {weight.shape[1]} input features, the activations {in_features}"
        )
    if out_features is not None and weight.shape[0] != out_features:
        raise ModelError(f"head weight has {weight.shape[0]} rows, the gradient {out_features}")


def _float32_cpu(t: torch.Tensor, name: str, dims: str) -> None:
    if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() < 1:
        raise ModelError(
            f"{name} must be a CPU float32 {dims} tensor, got {t.dtype} {tuple(t.shape)} on "
            f"{t.device.type}"
        )


def linear(
    x: torch.Tensor, weight: torch.Tensor, *, isa: str | None = None, threads: int | None = None
) -> torch.Tensor:
    """float32 (..., N) = x float32 (..., K) @ weight.T, weight bfloat16 (N, K), natively."""
    _float32_cpu(x, "x", "(..., K)")
    if x.shape[-1] == 0:
        raise ModelError("x has no features (K = 0)")
    _check_weight(weight, in_features=x.shape[-1])
    lib = library.need_library()
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)
    rows = x.numel() // x.shape[-1]
    if rows == 0 or weight.shape[0] == 0:
        return out
    rc = lib.r3mes_bf16_linear(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, x.shape[-1], weight.shape[0],
        library.isa_index(isa), threads or torch.get_num_threads(),
    )  # fmt: skip
    library.check(rc, "bfloat16 head")
    return out


def matmul_t(
    grad: torch.Tensor, weight: torch.Tensor, *, isa: str | None = None, threads: int | None = None
) -> torch.Tensor:
    """float32 (M, K) = grad float32 (M, N) @ weight, weight bfloat16 (N, K), natively."""
    _float32_cpu(grad, "grad", "(M, N)")
    if grad.dim() != 2:
        raise ModelError(f"grad must be (M, N), got {tuple(grad.shape)}")
    _check_weight(weight, out_features=grad.shape[1])
    lib = library.need_library()
    grad, weight = grad.contiguous(), weight.contiguous()
    out = torch.empty((grad.shape[0], weight.shape[1]), dtype=torch.float32)
    if out.numel() == 0:
        return out
    if grad.shape[1] == 0:
        return out.zero_()
    rc = lib.r3mes_bf16_matmul_t(
        grad.data_ptr(), weight.data_ptr(), out.data_ptr(), grad.shape[0], weight.shape[1],
        grad.shape[1], library.isa_index(isa), threads or torch.get_num_threads(),
    )  # fmt: skip
    library.check(rc, "bfloat16 head input gradient")
    return out


HeadOp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@functools.cache
def ops() -> tuple[HeadOp, HeadOp]:
    """Register (once) and return `r3mes::bf16_linear` (with autograd for x) and
    `r3mes::bf16_matmul_t`; their fake implementations give shapes and dtypes only."""

    @torch.library.custom_op("r3mes::bf16_matmul_t", mutates_args=())
    def bf16_matmul_t(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return matmul_t(grad, weight)

    @bf16_matmul_t.register_fake
    def _(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return grad.new_empty((grad.shape[0], weight.shape[1]), dtype=torch.float32)

    @torch.library.custom_op("r3mes::bf16_linear", mutates_args=())
    def bf16_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return linear(x, weight)

    @bf16_linear.register_fake
    def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight = inputs
        ctx.x_shape = x.shape
        ctx.save_for_backward(weight)

    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _input_grad(ctx, grad), None

    bf16_linear.register_autograd(backward, setup_context=setup_context)
    return bf16_linear, bf16_matmul_t


class _NativeHead(torch.autograd.Function):
    """The eager autograd of `r3mes::bf16_linear`, calling the kernels directly: a custom op's
    Python wrapper imports `torch._dynamo` (and triton) on its first call, ~115 MiB resident
    that an eager decode or training step never uses; `torch.compile` still sees the ops."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.x_shape = x.shape
        ctx.save_for_backward(weight)
        return linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _input_grad(ctx, grad), None


def _input_grad(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    """grad_x for both autograds of the head: the custom op under `torch.compile`, the kernel
    itself in eager mode (see `_NativeHead`)."""
    (weight,) = ctx.saved_tensors
    flat = grad.reshape(-1, weight.shape[0]).contiguous()
    grad_x = ops()[1](flat, weight) if torch.compiler.is_compiling() else matmul_t(flat, weight)
    return grad_x.reshape(ctx.x_shape)


def logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """float32 (..., N) = x @ weight.T for a frozen bfloat16 head, differentiable in x.

    The native kernels on CPU tensors where they run (the custom op under `torch.compile`,
    `_NativeHead` in eager mode); elsewhere (another device, no library,
    or the `reference` path forced) torch's float32 matmul on chunks of REFERENCE_CHUNK rows
    widened at a time.
    """
    if weight.requires_grad:
        raise ModelError("a bfloat16 head is frozen: its weight cannot require a gradient")
    if x.dtype != torch.float32 or x.dim() < 1:
        raise ModelError(f"head input must be float32 (..., K), got {x.dtype} {tuple(x.shape)}")
    if weight.dtype != torch.bfloat16 or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ModelError(
            f"head weight must be bfloat16 (N, {x.shape[-1]}), got {weight.dtype} "
            f"{tuple(weight.shape)}"
        )
    native = x.device.type == "cpu" and weight.device.type == "cpu"
    if native and library.current_isa() != library.REFERENCE:
        if torch.compiler.is_compiling():
            return ops()[0](x, weight)
        if torch.is_grad_enabled() and x.requires_grad:
            out: torch.Tensor = _NativeHead.apply(x, weight)  # type: ignore[no-untyped-call]
            return out
        return linear(x, weight)
    parts = [
        F.linear(x, weight[start : start + REFERENCE_CHUNK].float())
        for start in range(0, weight.shape[0], REFERENCE_CHUNK)
    ]
    return torch.cat(parts, dim=-1)
