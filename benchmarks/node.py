"""Cost of the miner's atomic mining transaction (journal, staging, rollback bookkeeping).

Compares one coordinated transaction (SQLite journal with fsync at every state, staged
safetensors residual, real blockstore, in-memory ledger) with the bare work it wraps
(store the update and save the residual). Also times journal recovery after a crash.
Run: .venv/bin/python -m benchmarks.node [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from r3mes.node.miner.coordinator import (
    AtomicMiningCoordinator,
    MiningTask,
    SubmissionRef,
    TrainedUpdate,
)
from r3mes.node.miner.journal import Journal, TxState
from r3mes.node.miner.parts import ContentUpdateStore
from r3mes.node.miner.residual import ResidualStore, save_tensors_atomic
from r3mes.storage.blockstore import Blockstore

PAYLOAD_BYTES = 256 * 1024
RESIDUAL = {"w": torch.zeros(256, 256)}


class Trainer:
    def __init__(self) -> None:
        self.n = 0

    def train(self, task: MiningTask) -> TrainedUpdate:
        self.n += 1
        payload = self.n.to_bytes(8, "big") + os.urandom(PAYLOAD_BYTES)
        digest = hashlib.sha256(payload).hexdigest()
        return TrainedUpdate(payload=payload, digest=digest, residual=RESIDUAL)


class Ledger:
    def __init__(self) -> None:
        self.subs: dict[int, SubmissionRef] = {}

    def find_submission(self, *, round_id: int) -> SubmissionRef | None:
        return self.subs.get(round_id)

    def submit(self, *, task: MiningTask, cid: str, digest: str) -> str:
        self.subs[task.round_id] = SubmissionRef(cid=cid, digest=digest)
        return f"tx{task.round_id}"


class Pool:
    def complete(self, task: MiningTask) -> None:
        return None

    def release(self, task: MiningTask) -> None:
        return None


def coordinated(root: Path, n: int) -> list[float]:
    coordinator = AtomicMiningCoordinator(
        journal=Journal(root / "journal.sqlite"),
        trainer=Trainer(),
        store=ContentUpdateStore(Blockstore(root / "blocks")),
        ledger=Ledger(),
        pool=Pool(),
        residuals=ResidualStore(root / "residual"),
    )
    times = []
    for i in range(n):
        start = time.perf_counter()
        coordinator.execute(MiningTask(round_id=i + 1, task_id=f"r{i}"))
        times.append(time.perf_counter() - start)
    return times


def bare(root: Path, n: int) -> list[float]:
    store, trainer = Blockstore(root / "blocks"), Trainer()
    times = []
    for i in range(n):
        start = time.perf_counter()
        update = trainer.train(MiningTask(round_id=i + 1, task_id=f"r{i}"))
        store.add_bytes(update.payload)
        save_tensors_atomic(root / "residual.safetensors", RESIDUAL)
        times.append(time.perf_counter() - start)
    return times


def recovery(root: Path, n: int) -> float:
    journal = Journal(root / "crashed.sqlite")
    for i in range(n):
        journal.begin(tx_id=f"t{i}", round_id=i + 1, task={"task_id": f"r{i}"})
        journal.advance(f"t{i}", TxState.TRAINING)
    coordinator = AtomicMiningCoordinator(
        journal=journal,
        trainer=Trainer(),
        store=ContentUpdateStore(Blockstore(root / "blocks2")),
        ledger=Ledger(),
        pool=Pool(),
        residuals=ResidualStore(root / "residual2"),
    )
    start = time.perf_counter()
    resolved = coordinator.recover()
    elapsed = time.perf_counter() - start
    assert len(resolved) == n
    return elapsed


def emit(figure: str, value: float, unit: str, goal: str, baseline: float | None = None) -> None:
    row = {
        "figure": figure,
        "value": round(value, 3),
        "unit": unit,
        "baseline": None,
        "ratio": None,
        "goal": goal,
    }
    if baseline is not None:
        row["baseline"] = round(baseline, 3)
        row["ratio"] = round(value / baseline, 3)
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer transactions (< 1 min)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)  # recovery logs one line per interrupted tx
    n = 20 if args.quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a").mkdir()
        (root / "b").mkdir()
        coord = statistics.median(coordinated(root / "a", n)) * 1000
        base = statistics.median(bare(root / "b", n)) * 1000
        emit("atomic mining transaction (256 KiB update), median", coord, "ms", "<= 3.0", base)
        per_tx = recovery(root, n) / n * 1000
        emit("journal recovery per interrupted transaction", per_tx, "ms", "<= 50")


if __name__ == "__main__":
    main()
