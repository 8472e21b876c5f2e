"""Task pool: prefetch bound, prepare hook, complete / release semantics, stale rounds."""

from __future__ import annotations

import threading

import pytest

from r3mes.node.coordinator import MiningTask
from r3mes.node.errors import ValidationError
from r3mes.node.task_pool import TaskPool


class Source:
    def __init__(self, rounds: list[int]) -> None:
        self.rounds = rounds

    def open_tasks(self) -> list[MiningTask]:
        return [MiningTask(round_id=r, task_id=f"round-{r}") for r in self.rounds]


def test_prefetch_bound_prepare_and_release() -> None:
    prepared: list[str] = []
    gate = threading.Event()

    def prepare(task: MiningTask) -> None:
        gate.wait(5)
        prepared.append(task.task_id)

    source = Source([1, 2, 3])
    pool = TaskPool(source=source, max_prefetch=2, prepare=prepare)
    assert pool.refresh() == 2 and pool.snapshot()["queued"] == 2
    gate.set()
    task = pool.take()
    assert task is not None and task.task_id == "round-1"
    assert "round-1" in prepared, "take waits for the task's prefetch"
    pool.release(task)  # rolled back: the source may offer it again
    assert pool.snapshot() == {"queued": 1, "taken": 0, "done": 0}
    pool.complete(pool.take())  # type: ignore[arg-type]
    source.rounds = [2, 3]
    assert pool.refresh() == 1
    assert [pool.take(), pool.take()] != [None, None]
    pool.close()


def test_closed_rounds_are_forgotten_and_done_tasks_not_requeued() -> None:
    source = Source([1])
    pool = TaskPool(source=source, max_prefetch=4)
    pool.refresh()
    source.rounds = [2]
    pool.refresh()
    task = pool.take()
    assert task is not None and task.round_id == 2, "round 1 closed: its task was dropped"
    pool.complete(task)
    assert pool.refresh() == 0 and pool.take() is None
    pool.mark_done("round-3")
    source.rounds = [3]
    assert pool.refresh() == 0


def test_prefetch_bounds_are_checked() -> None:
    with pytest.raises(ValidationError):
        TaskPool(source=Source([]), max_prefetch=0)
