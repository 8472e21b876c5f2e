"""The fuzz property and how long it runs.

Property, for every decoder of untrusted input: `decode(data)` returns, or raises one of the
decoder's documented error types, and takes under `CASE_SECONDS` of CPU time. Anything else
(an untyped exception, a hang) fails the test with the input that caused it.

CI runs one hypothesis search of `CI_EXAMPLES` cases per decoder. With `R3MES_FUZZ_LONG=1`
each decoder gets `R3MES_FUZZ_SECONDS / DECODERS` seconds (default 900 s in all), spent in
hypothesis searches of `LONG_BATCH` cases with fresh seeds; `R3MES_FUZZ_REPORT=path` appends
one JSON line per decoder (cases, slowest case) to `path`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

CI_EXAMPLES = 200
LONG_BATCH = 500
CASE_SECONDS = 2.0
"""CPU seconds one case may take (CPU, not wall time: other processes share the cores)."""
DECODERS = 16
"""Decoders fuzzed by this package; the long run splits its time among them."""

_SETTINGS = settings(
    deadline=None,  # timed below in CPU seconds, which a loaded machine does not inflate
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@dataclass
class Stats:
    """What one decoder's fuzzing saw."""

    cases: int = 0
    max_cpu: float = 0.0
    max_wall: float = 0.0
    typed_errors: int = 0


def long_run() -> bool:
    return os.environ.get("R3MES_FUZZ_LONG") == "1"


def _seconds_each() -> float:
    return float(os.environ.get("R3MES_FUZZ_SECONDS", "900")) / DECODERS


def check(
    name: str,
    decode: Callable[[Any], object],
    data: object,
    allowed: tuple[type[BaseException], ...],
    stats: Stats,
) -> None:
    """Run one case; fail on an untyped exception or a case over CASE_SECONDS."""
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        decode(data)
    except allowed:
        stats.typed_errors += 1
    except Exception as exc:
        raise AssertionError(
            f"{name} raised untyped {type(exc).__name__}: {str(exc)[:300]} on {_preview(data)}"
        ) from exc
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats.cases += 1
    stats.max_cpu = max(stats.max_cpu, cpu)
    stats.max_wall = max(stats.max_wall, wall)
    assert cpu < CASE_SECONDS, f"{name} took {cpu:.2f} s of CPU on {_preview(data)}"


def _preview(data: object) -> str:
    text = repr(data)
    return text if len(text) <= 300 else f"{text[:300]}... ({len(text)} characters)"


def fuzz(
    name: str,
    strategy: st.SearchStrategy[Any],
    decode: Callable[[Any], object],
    allowed: tuple[type[BaseException], ...],
    *,
    ci_examples: int = CI_EXAMPLES,
) -> Stats:
    """Check the property on `strategy`'s cases: `ci_examples` of them, or the long budget."""
    stats = Stats()

    def one(data: object) -> None:
        check(name, decode, data, allowed, stats)

    if not long_run():
        settings(_SETTINGS, max_examples=ci_examples)(given(strategy)(one))()
        return stats
    stop = time.monotonic() + _seconds_each()
    batch = 0
    while time.monotonic() < stop:
        search = given(strategy)(one)
        seed(batch)(settings(_SETTINGS, max_examples=LONG_BATCH)(search))()
        batch += 1
    _report(name, stats)
    return stats


def _report(name: str, stats: Stats) -> None:
    line = {
        "decoder": name,
        "cases": stats.cases,
        "typed_errors": stats.typed_errors,
        "max_cpu_s": round(stats.max_cpu, 4),
        "max_wall_s": round(stats.max_wall, 4),
    }
    print(json.dumps(line))
    path = os.environ.get("R3MES_FUZZ_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
