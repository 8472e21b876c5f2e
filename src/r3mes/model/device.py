"""Device detection and the memory profiles that pick default LoRA rank and batch size.

Profiles (from the miner design notes), by the memory of the device that will train:
ultra_low < 4 GB: rank 4, batch 1; low 4-8 GB: rank 8, batch 2; medium 8-16 GB: rank 16,
batch 4; high 16-32 GB: rank 32, batch 8; ultra_high > 32 GB: rank 64, batch 16.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from r3mes.model.errors import ModelError

logger = logging.getLogger(__name__)
GIB = 1024**3


@dataclass(frozen=True)
class MemoryProfile:
    """Defaults for one memory class."""

    name: str
    """Profile name (ultra_low .. ultra_high)."""
    lora_rank: int
    """Default LoRA rank."""
    batch_size: int
    """Default training batch size."""


# (upper bound in bytes, exclusive; profile); the last one has no bound. ultra_high is
# "> 32 GB", so a device of exactly 32 GiB is still high.
PROFILES: tuple[tuple[int | None, MemoryProfile], ...] = (
    (4 * GIB, MemoryProfile("ultra_low", 4, 1)),
    (8 * GIB, MemoryProfile("low", 8, 2)),
    (16 * GIB, MemoryProfile("medium", 16, 4)),
    (32 * GIB + 1, MemoryProfile("high", 32, 8)),
    (None, MemoryProfile("ultra_high", 64, 16)),
)
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def memory_profile(total_bytes: int) -> MemoryProfile:
    """The profile for a device with `total_bytes` of memory."""
    if isinstance(total_bytes, bool) or not isinstance(total_bytes, int) or total_bytes <= 0:
        raise ModelError(f"device memory must be a positive byte count, got {total_bytes!r}")
    for bound, profile in PROFILES:
        if bound is None or total_bytes < bound:
            return profile
    raise AssertionError("unreachable: the last profile has no bound")


def detect_device() -> str:
    """ "cuda" when a CUDA GPU is usable, else "mps" on Apple silicon, else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def device_memory_bytes(device: str) -> int:
    """Total memory of `device`: GPU memory for cuda, system RAM otherwise (shared on mps)."""
    if device == "cuda":
        return int(torch.cuda.get_device_properties(0).total_memory)
    if device not in ("cpu", "mps"):
        raise ModelError(f"unknown device {device!r}; use cuda, mps or cpu")
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError) as exc:
        logger.warning("cannot read system memory size (%s); assuming 4 GiB", exc)
        return 4 * GIB


def default_profile(device: str | None = None) -> MemoryProfile:
    """The memory profile of `device` (detected when None)."""
    return memory_profile(device_memory_bytes(device or detect_device()))


def resolve_device(choice: str) -> str:
    """The torch device for a `--device` choice: "auto" detects (cuda, mps, cpu).

    "cuda" must exist here; anything else is refused.
    """
    if choice == "auto":
        return detect_device()
    if choice == "cpu":
        return "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ModelError("--device cuda: no usable CUDA GPU here; use --device cpu or auto")
        return "cuda"
    raise ModelError(f"unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}")
