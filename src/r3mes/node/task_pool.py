"""The miner's task pool: which tasks are open, which are taken, which are done.

`refresh()` asks a `TaskSource` (the chain) for this miner's open tasks and queues up to
`max_prefetch` of them; each queued task is handed to a `prepare` callback on a background
thread so its artifacts (base model, adapter, dataset shard) are local before training
starts. `take()` hands out the next task, `complete()` retires it, `release()` gives it back
after a rollback so the source can offer it again while its round is open.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from r3mes.node.coordinator import MiningTask
from r3mes.node.errors import ValidationError

logger = logging.getLogger(__name__)


class TaskSource(Protocol):
    def open_tasks(self) -> list[MiningTask]:
        """Tasks this miner may work on now, oldest round first."""
        ...


class TaskPool:
    """Bounded, thread-safe queue of prefetched tasks."""

    def __init__(
        self,
        *,
        source: TaskSource,
        max_prefetch: int = 2,
        prepare: Callable[[MiningTask], None] | None = None,
    ) -> None:
        if not 1 <= max_prefetch <= 64:
            raise ValidationError(f"max_prefetch must be in [1, 64], got {max_prefetch}")
        self.source = source
        self.max_prefetch = max_prefetch
        self._prepare = prepare
        self._lock = threading.Lock()
        self._queued: OrderedDict[str, MiningTask] = OrderedDict()
        self._taken: dict[str, MiningTask] = {}
        self._done: set[str] = set()
        self._prefetch: dict[str, Future[None]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")

    def refresh(self) -> int:
        """Queue newly open tasks (up to the prefetch limit); returns how many were added."""
        added = 0
        tasks = self.source.open_tasks()
        if tasks:
            self.forget_before(min(t.round_id for t in tasks))
        for task in tasks:
            with self._lock:
                if len(self._queued) >= self.max_prefetch:
                    break
                key = task.task_id
                if key in self._queued or key in self._taken or key in self._done:
                    continue
                self._queued[key] = task
                added += 1
            if self._prepare is not None:
                self._prefetch[task.task_id] = self._executor.submit(self._prepare, task)
        return added

    def take(self) -> MiningTask | None:
        """The next queued task (waiting for its prefetch to finish), or None."""
        with self._lock:
            if not self._queued:
                return None
            key, task = self._queued.popitem(last=False)
            self._taken[key] = task
        future = self._prefetch.pop(key, None)
        if future is not None:
            exc = future.exception()  # waits; a failed prefetch is retried by training itself
            if exc is not None:
                logger.warning("prefetch of %s failed: %s", key, exc)
        return task

    def complete(self, task: MiningTask) -> None:
        with self._lock:
            self._taken.pop(task.task_id, None)
            self._done.add(task.task_id)

    def release(self, task: MiningTask) -> None:
        """Give a taken task back: the next `refresh` offers it again, re-derived from the
        source (fresh shard claims), or not at all once its round has closed."""
        with self._lock:
            self._taken.pop(task.task_id, None)

    def forget_before(self, round_id: int) -> None:
        """Drop queued tasks of rounds before `round_id` (they closed)."""
        with self._lock:
            for key in [k for k, t in self._queued.items() if t.round_id < round_id]:
                del self._queued[key]
                self._prefetch.pop(key, None)

    def mark_done(self, task_id: str) -> None:
        """Record a task as finished elsewhere (e.g. recovered from the journal)."""
        with self._lock:
            self._queued.pop(task_id, None)
            self._done.add(task_id)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "queued": len(self._queued),
                "taken": len(self._taken),
                "done": len(self._done),
            }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
