"""The background workers a running backend starts (sweeper, chain follower, indexer, ...).

Each concern adds its own entry; `create_app`'s lifespan spawns them all on the runtime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from r3mes.backend.runtime import Runtime

Worker = tuple[str, Callable[[], Awaitable[None]]]


def workers(runtime: Runtime) -> list[Worker]:
    """(name, coroutine factory) for every worker this configuration runs."""
    found: list[Worker] = []
    return found
