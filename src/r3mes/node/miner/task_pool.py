"""The miner's task pool: which tasks are open, which are taken, which are done, and which
artifacts are prepared ahead of the work that needs them.

The ledger hands a miner one task per round, so the queue rarely holds more than one task.
What prefetching buys is time between rounds: `refresh()` asks the `TaskSource` both for
open tasks and for the artifact sets (base model, dataset, adapter) that upcoming work will
use - the current round's, and the adapter version the proposer just got approved, which
the next round will train on. Up to `max_prefetch` distinct sets are fetched, unpacked and
loaded by the `prepare` callback on a background thread, so when the next round opens its
training starts without a download. `take()` hands out the next task (waiting for its
set's preparation), `complete()` retires it, `release()` gives it back after a rollback.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from r3mes.node.errors import ValidationError
from r3mes.node.miner.coordinator import MiningTask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArtifactSet:
    """The artifacts one round's work needs; "" for an adapter means none yet."""

    base_model_cid: str
    dataset_cid: str
    adapter_cid: str

    @classmethod
    def of(cls, task: MiningTask) -> ArtifactSet | None:
        """The set a task names in its details (None for a task that names none)."""
        d = task.details
        if not d.get("base_model_cid") or not d.get("dataset_cid"):
            return None
        return cls(str(d["base_model_cid"]), str(d["dataset_cid"]), str(d.get("adapter_cid", "")))


class TaskSource(Protocol):
    def open_tasks(self) -> list[MiningTask]:
        """Tasks this miner may work on now, oldest round first."""
        ...

    def upcoming(self) -> list[ArtifactSet]:
        """Artifact sets current and upcoming work will use, soonest first."""
        ...


class TaskPool:
    """Bounded, thread-safe queue of tasks plus background preparation of artifact sets."""

    def __init__(
        self,
        *,
        source: TaskSource,
        max_prefetch: int = 2,
        prepare: Callable[[ArtifactSet], None] | None = None,
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
        self._prepared: OrderedDict[ArtifactSet, Future[None]] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")

    def refresh(self) -> int:
        """Queue newly open tasks and start preparing upcoming artifact sets; returns how
        many tasks were added."""
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
        wanted = [s for s in (ArtifactSet.of(t) for t in self._queued.values()) if s]
        wanted += self.source.upcoming()
        for artifacts in dict.fromkeys(wanted):  # soonest first, no repeats
            self._start(artifacts)
        return added

    def _start(self, artifacts: ArtifactSet) -> None:
        if self._prepare is None:
            return
        with self._lock:
            if artifacts in self._prepared:
                self._prepared.move_to_end(artifacts)
                return
            if len(self._prepared) >= self.max_prefetch and not self._evict_one():
                return  # every slot is still being prepared: try again next refresh
            self._prepared[artifacts] = self._executor.submit(self._prepare, artifacts)

    def _evict_one(self) -> bool:
        """Forget the oldest finished preparation (caller holds the lock)."""
        for artifacts, future in self._prepared.items():
            if future.done():
                del self._prepared[artifacts]
                return True
        return False

    def take(self) -> MiningTask | None:
        """The next queued task (waiting for its artifacts' preparation), or None."""
        with self._lock:
            if not self._queued:
                return None
            key, task = self._queued.popitem(last=False)
            self._taken[key] = task
        artifacts = ArtifactSet.of(task)
        if artifacts is not None:
            self._start(artifacts)
            with self._lock:
                future = self._prepared.get(artifacts)
            exc = future.exception() if future is not None else None  # waits
            if exc is not None:  # training fetches again and reports the real error
                logger.warning("prefetch for %s failed: %s", key, exc)
                with self._lock:
                    self._prepared.pop(artifacts, None)
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

    def mark_done(self, task_id: str) -> None:
        """Record a task as finished elsewhere (e.g. recovered from the journal)."""
        with self._lock:
            self._queued.pop(task_id, None)
            self._done.add(task_id)

    def prepared(self) -> list[ArtifactSet]:
        """Artifact sets whose preparation finished without error, oldest first."""
        with self._lock:
            futures = list(self._prepared.items())
        return [a for a, f in futures if f.done() and f.exception() is None]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "queued": len(self._queued),
                "taken": len(self._taken),
                "done": len(self._done),
                "prefetching": sum(not f.done() for f in self._prepared.values()),
                "prefetched": sum(f.done() for f in self._prepared.values()),
            }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
