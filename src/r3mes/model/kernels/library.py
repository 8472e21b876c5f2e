"""The native kernel library (`ternary.c` + `head.c`), loaded with ctypes: no torch here.

`setup.py` builds the two C files into one plain shared library (no Python or torch headers).
This module finds and loads it once per process, declares its C signatures and keeps the
process's instruction-set choice.  `ternary` and `head` wrap it for torch tensors;
`r3mes.model.torchfree` calls it on numpy arrays, in a process that never imports torch.
Where the library was not built or does not load, `available()` is False and one warning
says so.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import logging
import warnings
from pathlib import Path
from typing import Any

from r3mes.model.errors import ModelError

logger = logging.getLogger(__name__)

ISAS = ("scalar", "avx2", "avx512bw", "avx512vnni", "neon", "neon_dotprod")
"""Instruction-set paths of `ternary.c`, in its enum order."""
REFERENCE = "reference"
"""Not a kernel path: BitLinear's torch computation (unpack + float matmul of integer codes)."""

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


def isa_index(isa: str | None) -> int:
    """The C enum value of `isa` (None: the current path); raises for `REFERENCE`."""
    name = current_isa() if isa is None else isa
    if name not in ISAS:
        raise KernelUnavailable(f"no native kernel path {name!r}")
    return ISAS.index(name)


def check(rc: int, what: str) -> None:
    """Raise `KernelUnavailable` naming `what` when a kernel call returned an error code."""
    if rc != 0:
        raise KernelUnavailable(f"{what} failed: {_ERRORS.get(rc, f'error {rc}')}")


def need_library() -> ctypes.CDLL:
    """The loaded library; raises `KernelUnavailable` when it was not built."""
    lib = _library()
    if lib is None:
        raise KernelUnavailable("the native ternary kernel is not built")
    return lib
