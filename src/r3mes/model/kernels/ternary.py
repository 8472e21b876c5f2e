"""The native ternary matmul (`ternary.c`) as `torch.library` custom ops.

`ternary.c` (with `head.c`, the bfloat16 head that `head.py` wraps) is built by the package's
own `setup.py` into a plain shared library (no Python or torch headers) and loaded here with
ctypes on first use.  Where it was not built or does not load, `available()` is False, one
warning says so, and BitLinear keeps its torch path.

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

import ctypes
import functools
import importlib.machinery
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from r3mes.model.errors import ModelError

logger = logging.getLogger(__name__)

ISAS = ("scalar", "avx2", "avx512bw", "avx512vnni", "neon", "neon_dotprod")
"""Instruction-set paths of `ternary.c`, in its enum order."""
REFERENCE = "reference"
"""Not a kernel path: BitLinear's torch computation (unpack + float matmul of integer codes)."""

TensorOp = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

_LIB_STEM = "_ternary"
_SYMBOLS = (
    "r3mes_ternary_matmul",
    "r3mes_ternary_matmul_t",
    "r3mes_ternary_linear",
    "r3mes_ternary_isa_supported",
    "r3mes_ternary_best_isa",
    "r3mes_bf16_linear",
    "r3mes_bf16_matmul_t",
)
_ERRORS = {-1: "bad arguments", -2: "instruction set not supported", -3: "cannot start a thread"}
_state: dict[str, Any] = {"isa": None, "best": 0}


class KernelUnavailable(ModelError):
    """The native ternary kernel is not built or cannot run the requested path."""


def _library_path() -> Path | None:
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{_LIB_STEM}{suffix}"
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    """Load the built library once; on failure warn once and return None."""
    path = _library_path()
    reason = "it was not built (no C compiler at install time?)"
    lib: ctypes.CDLL | None = None
    if path is not None:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            reason = f"it does not load ({exc})"
    if lib is not None and not all(hasattr(lib, name) for name in _SYMBOLS):
        lib, reason = None, f"{path} was built from an older ternary.c"
    if lib is None:
        message = (
            f"r3mes native ternary kernel unavailable: {reason}; BitLinear uses its slower "
            "torch path. Reinstall with a C compiler (`pip install -e .`) to build it."
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        logger.warning(message)
        return None
    i64, c_int, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    for name in (
        "r3mes_ternary_matmul", "r3mes_ternary_matmul_t", "r3mes_bf16_linear",
        "r3mes_bf16_matmul_t",
    ):  # fmt: skip
        fn = getattr(lib, name)
        fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, c_int, c_int]
        fn.restype = c_int
    lib.r3mes_ternary_linear.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, c_int, c_int]
    lib.r3mes_ternary_linear.restype = c_int
    lib.r3mes_ternary_isa_supported.argtypes = [c_int]
    lib.r3mes_ternary_isa_supported.restype = c_int
    lib.r3mes_ternary_best_isa.restype = c_int
    _state["best"] = int(lib.r3mes_ternary_best_isa())  # fixed per process: asked once
    return lib


def available() -> bool:
    """True when the native kernel is built and loads (warns once when it does not)."""
    return _library() is not None


def supported_isas() -> list[str]:
    """The kernel paths this CPU can run, scalar first; empty without the kernel."""
    lib = _library()
    if lib is None:
        return []
    return [name for i, name in enumerate(ISAS) if lib.r3mes_ternary_isa_supported(i)]


def best_isa() -> str:
    """The fastest path this CPU runs (`REFERENCE` without the kernel)."""
    return REFERENCE if _library() is None else ISAS[_state["best"]]


def set_isa(name: str | None) -> None:
    """Force one path for this process (`None`: the best; `REFERENCE`: BitLinear's torch path)."""
    if name is not None and name != REFERENCE:
        if name not in ISAS:
            raise KernelUnavailable(f"unknown ternary kernel path {name!r}; choose from {ISAS}")
        if name not in supported_isas():
            raise KernelUnavailable(
                f"ternary kernel path {name!r} cannot run here (this CPU runs {supported_isas()})"
            )
    _state["isa"] = name


def current_isa() -> str:
    """The path BitLinear uses now: the forced one, else the best."""
    forced: str | None = _state["isa"]
    return forced if forced is not None else best_isa()


def _isa_index(isa: str | None) -> int:
    name = current_isa() if isa is None else isa
    if name not in ISAS:
        raise KernelUnavailable(f"no native kernel path {name!r}")
    return ISAS.index(name)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise KernelUnavailable(f"{what} failed: {_ERRORS.get(rc, f'error {rc}')}")


def _need_library() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise KernelUnavailable("the native ternary kernel is not built")
    return lib


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
    lib = _need_library()
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
    lib = _need_library()
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
    lib = _need_library()
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
