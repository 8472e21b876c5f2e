"""What every benchmark line carries about the machine, and the process's resident memory.

No torch here: `benchmarks.torchfree` measures a process that never imports it.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
              "amx_int8", "asimd", "asimddp")  # fmt: skip


def cpu_description() -> dict[str, Any]:
    """CPU model and the SIMD flags that matter here (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), "x86_64"):
                model = value.strip()
            if key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "flags": [f for f in SIMD_FLAGS if f in flags]}


def emit(context: dict[str, Any], figure: str, value: float, unit: str, **extra: Any) -> None:
    """Print one benchmark line: the figure, its baseline and ratio, the machine, the load."""
    row = {"figure": figure, "value": value, "unit": unit, "baseline": None, "ratio": None}
    row.update(goal="measured")
    row.update(extra)
    row.update(context)
    row.setdefault("load_avg", round(os.getloadavg()[0], 2))  # the machine is shared
    print(json.dumps(row), flush=True)


def reset_peak_rss() -> None:
    """Make the RSS high-water mark the current RSS (Linux; elsewhere nothing happens)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS
    except OSError:
        pass


def rss() -> int:
    """The process's resident memory now, in bytes (0 where /proc is missing)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """The process's resident-memory high-water mark, in bytes (0 where /proc is missing)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
