"""Waiting in tests: on a condition, with a bound, never a fixed sleep before an assert."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    done: Callable[[], bool], *, timeout: float, what: str = "the condition", tick: float = 0.05
) -> None:
    """Poll `done` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(tick)


def step_until(
    done: Callable[[], bool],
    *steps: Callable[[], bool],
    timeout: float,
    what: str = "the condition",
) -> None:
    """Run every role's `step()` each turn until `done`; rest a moment when none did work."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        did = [step() for step in steps]  # every role steps, whatever the others did
        if not any(did):
            time.sleep(0.2)
