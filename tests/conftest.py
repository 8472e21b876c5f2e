"""Suite-wide guard: no test module leaves a thread running behind it.

A thread a test (or one of its fixtures) starts must end by the time its module's fixtures
are torn down: an in-process backend whose server thread outlived its test kept its chain
follower polling a devnet that was gone, and its warnings landed in a later, unrelated test.
Every thread started while a module ran and still alive after its teardown (given a grace
period to finish stopping) fails that module's last test, naming the test that started it
and showing where the thread is stuck. Threads that session-scoped fixtures start on purpose
and the process-wide threads libraries keep on purpose belong in `SESSION_THREADS`.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

GRACE_S = 20.0
"""How long, in all, a module's leftover threads get to finish stopping (a loaded box)."""
SESSION_THREADS: tuple[str, ...] = ("tqdm_monitor",)
"""Name prefixes of threads allowed to outlive a module: tqdm's one monitor thread per process
(started by the first progress bar, kept until exit) and any session-scoped fixture's."""

_started_by: dict[threading.Thread, str] = {}


@pytest.fixture(autouse=True)
def _note_threads_started_by_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remember which test started each thread still alive after it (for the module check)."""
    before = set(threading.enumerate())
    yield
    for thread in threading.enumerate():
        if thread not in before:
            _started_by.setdefault(thread, request.node.nodeid)


@pytest.fixture(scope="module", autouse=True)
def _no_thread_outlives_its_module(request: pytest.FixtureRequest) -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + GRACE_S
    leaked: list[threading.Thread] = []
    for thread in threading.enumerate():
        if thread in before or thread is threading.current_thread():
            continue
        if thread.name.startswith(SESSION_THREADS):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            leaked.append(thread)
    for thread in list(_started_by):
        if not thread.is_alive():
            del _started_by[thread]
    if leaked:
        pytest.fail(
            f"{len(leaked)} thread(s) started in {request.node.nodeid} still run "
            f"{GRACE_S:.0f} s after its teardown (stop them in the fixture that starts them):\n"
            + "\n".join(_describe(t) for t in leaked),
            pytrace=False,
        )


def _describe(thread: threading.Thread) -> str:
    origin = _started_by.get(thread, "a module-scoped fixture")
    frame = sys._current_frames().get(thread.ident or -1)
    stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
    kind = "daemon" if thread.daemon else "non-daemon"
    return f"- {thread.name} ({kind}), started by {origin}; now at:\n{stack}"
