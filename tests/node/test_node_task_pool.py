"""Task pool: queue bound, complete / release semantics, stale rounds, and prefetching the
artifacts of upcoming work (for real, through an ArtifactCache over a blockstore)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from support.wait import wait_until

from r3mes.node.errors import ValidationError
from r3mes.node.miner.coordinator import MiningTask
from r3mes.node.miner.task_pool import ArtifactSet, TaskPool

A = ArtifactSet("bafymodel", "bafydata", "bafyadapter1")
B = ArtifactSet("bafymodel", "bafydata", "bafyadapter2")


def _task(round_id: int, artifacts: ArtifactSet | None = None) -> MiningTask:
    details = {} if artifacts is None else {
        "base_model_cid": artifacts.base_model_cid,
        "dataset_cid": artifacts.dataset_cid,
        "adapter_cid": artifacts.adapter_cid,
    }  # fmt: skip
    return MiningTask(round_id=round_id, task_id=f"round-{round_id}", details=details)


def _until(done: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_until(done, timeout=timeout, what="the task pool", tick=0.01)


class Source:
    def __init__(self, rounds: list[int], upcoming: list[ArtifactSet] | None = None) -> None:
        self.rounds = rounds
        self.sets = upcoming or []

    def open_tasks(self) -> list[MiningTask]:
        return [_task(r, A) for r in self.rounds]

    def upcoming(self) -> list[ArtifactSet]:
        return self.sets


def test_queue_bound_complete_and_release() -> None:
    source = Source([1, 2, 3])
    pool = TaskPool(source=source, max_prefetch=2)
    assert pool.refresh() == 2 and pool.snapshot()["queued"] == 2
    task = pool.take()
    assert task is not None and task.task_id == "round-1"
    pool.release(task)  # rolled back: the source may offer it again
    assert pool.snapshot()["queued"] == 1 and pool.snapshot()["taken"] == 0
    pool.complete(pool.take())  # type: ignore[arg-type]
    source.rounds = [2, 3]
    assert pool.refresh() == 1
    assert [pool.take(), pool.take()] != [None, None]
    pool.close()


def test_next_rounds_artifacts_are_prepared_before_any_task_exists() -> None:
    prepared: list[ArtifactSet] = []
    gate = threading.Event()

    def prepare(artifacts: ArtifactSet) -> None:
        gate.wait(60)
        prepared.append(artifacts)

    source = Source([], upcoming=[A, B])  # waiting between rounds: no task, B announced
    pool = TaskPool(source=source, max_prefetch=2, prepare=prepare)
    assert pool.refresh() == 0 and pool.snapshot()["prefetching"] == 2
    gate.set()
    source.rounds = [7]
    pool.refresh()
    task = pool.take()
    assert task is not None and A in prepared, "take waits for its task's artifacts"
    _until(lambda: B in pool.prepared())
    pool.close()
    assert prepared == [A, B], "each set is prepared once, soonest first"


def test_prefetch_is_bounded_by_max_prefetch() -> None:
    calls: list[ArtifactSet] = []
    gate = threading.Event()

    def prepare(artifacts: ArtifactSet) -> None:
        calls.append(artifacts)
        gate.wait(60)

    pool = TaskPool(source=Source([], upcoming=[A, B]), max_prefetch=1, prepare=prepare)
    pool.refresh()
    pool.refresh()  # A is still in flight: B waits for a free slot
    assert pool.snapshot()["prefetching"] + pool.snapshot()["prefetched"] == 1
    gate.set()
    _until(lambda: bool(pool.prepared()))
    pool.refresh()  # A finished: its slot goes to B
    _until(lambda: B in pool.prepared())
    assert calls == [A, B]
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


def test_trainer_prefetch_loads_the_next_adapter(tiny_net, tiny_profile, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real prepare step: the next version's adapter is fetched, unpacked and loaded
    from the blockstore, so training on it later reads it from memory."""
    from r3mes.chain.client import BlockchainClient
    from r3mes.node.artifacts import ArtifactCache
    from r3mes.node.miner.parts import TrainerConfig, WorkTrainer
    from r3mes.node.miner.residual import ResidualStore
    from r3mes.storage.blockstore import Blockstore

    cache = ArtifactCache(
        store=Blockstore(tiny_net.store_root), root=tmp_path / "artifacts", source=tiny_net.source()
    )
    trainer = WorkTrainer(
        config=TrainerConfig(profile=tiny_profile, miner="m"),
        artifacts=cache,
        residuals=ResidualStore(tmp_path / "residual"),
        client=BlockchainClient("http://127.0.0.1:9"),  # never called by prepare
    )
    upcoming = ArtifactSet(tiny_net.model_cid, tiny_net.dataset_cid, tiny_net.adapter_cid)
    pool = TaskPool(source=Source([], upcoming=[upcoming]), max_prefetch=2, prepare=trainer.prepare)
    pool.refresh()
    _until(lambda: upcoming in pool.prepared() or not pool.snapshot()["prefetching"])
    assert upcoming in pool.prepared(), "the preparation failed"
    assert (tmp_path / "artifacts" / "adapters" / "tiny-adapter" / "1").is_dir()
    assert cache.is_loaded("adapter", tiny_net.adapter_cid)
    assert cache.is_loaded("model", tiny_net.model_cid)
    pool.close()
