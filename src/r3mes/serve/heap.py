"""Hand freed heap memory back to the operating system where the C library allows it.

glibc keeps freed chunks of its heaps (one per thread that allocates) for reuse; after the
serving engine swaps a batch's LoRA weights (hundreds of MB at the 2B shape, in chunks of a
few MB) a few hundred MB of freed memory stayed resident. `malloc_trim(0)` returns the free
pages of every arena. Elsewhere (musl, macOS, Windows) there is nothing to call.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def return_freed_heap() -> bool:
    """Release the heaps' free pages (glibc); False where the C library has no such call."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True
