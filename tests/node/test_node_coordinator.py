"""AtomicMiningCoordinator with in-memory fakes for storage, chain and task pool."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import httpx
import pytest
import torch

from r3mes.node.errors import TransactionError
from r3mes.node.miner.coordinator import (
    AtomicMiningCoordinator,
    CoordinatorConfig,
    MiningTask,
    SubmissionRef,
    TrainedUpdate,
)
from r3mes.node.miner.journal import Journal, TxState
from r3mes.node.miner.parts import ContentUpdateStore
from r3mes.node.miner.residual import ResidualStore
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.storage.blockstore import Blockstore


class FakeTrainer:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls = 0

    def train(self, task: MiningTask) -> TrainedUpdate:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        payload = f"update-{task.task_id}".encode()
        return TrainedUpdate(
            payload=payload,
            digest=hashlib.sha256(payload).hexdigest(),
            residual={"w": torch.full((2, 2), float(task.round_id))},
            metrics={"loss": 1.5},
        )


class FakeStore:
    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.failures = failures or []
        self.pinned: dict[str, bytes] = {}
        self.unpinned: list[str] = []

    def cid_for(self, data: bytes) -> str:
        return "bafy" + hashlib.sha256(data).hexdigest()[:20]

    def put(self, data: bytes) -> str:
        cid = self.cid_for(data)
        self.pinned[cid] = data  # stored before the failure is reported
        if self.failures:
            raise self.failures.pop(0)
        return cid

    def is_pinned(self, cid: str) -> bool:
        return cid in self.pinned

    def unpin(self, cid: str) -> None:
        self.unpinned.append(cid)
        self.pinned.pop(cid, None)


class FakeLedger:
    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.failures = failures or []
        self.submissions: dict[int, SubmissionRef] = {}
        self.submit_calls = 0
        self.lookups = 0
        self.land_then_fail = False
        self.trace = ("", "")

    def find_submission(self, *, round_id: int) -> SubmissionRef | None:
        self.lookups += 1
        return self.submissions.get(round_id)

    def submit(
        self,
        *,
        task: MiningTask,
        cid: str,
        digest: str,
        residual_cid: str = "",
        residual_digest: str = "",
        base_submission_id: int = 0,
        trace_cid: str = "",
        trace_root: str = "",
    ) -> str:
        self.submit_calls += 1
        self.trace = (trace_cid, trace_root)
        if self.land_then_fail:  # the tx lands but the answer is lost
            self.land_then_fail = False
            self.submissions[task.round_id] = SubmissionRef(cid=cid, digest=digest, chain_tx="T1")
            raise httpx.ReadTimeout("answer lost")
        if self.failures:
            raise self.failures.pop(0)
        self.submissions[task.round_id] = SubmissionRef(cid=cid, digest=digest, chain_tx="T1")
        return "T1"


class FakePool:
    def __init__(self) -> None:
        self.completed: list[str] = []
        self.released: list[str] = []

    def complete(self, task: MiningTask) -> None:
        self.completed.append(task.task_id)

    def release(self, task: MiningTask) -> None:
        self.released.append(task.task_id)


FAST = CoordinatorConfig(
    upload_retry=RetryPolicy(max_retries=2, initial_delay=0.01),
    submit_retry=RetryPolicy(max_retries=2, initial_delay=0.01),
)


def make(
    tmp_path: Path,
    *,
    trainer: FakeTrainer | None = None,
    store: FakeStore | None = None,
    ledger: FakeLedger | None = None,
) -> tuple[AtomicMiningCoordinator, FakeStore, FakeLedger, FakePool, list[float]]:
    sleeps: list[float] = []
    store = store or FakeStore()
    ledger = ledger or FakeLedger()
    pool = FakePool()
    coordinator = AtomicMiningCoordinator(
        journal=Journal(tmp_path / "journal.sqlite"),
        trainer=trainer or FakeTrainer(),
        store=store,
        ledger=ledger,
        pool=pool,
        residuals=ResidualStore(tmp_path / "residual"),
        config=FAST,
        sleep=sleeps.append,
    )
    return coordinator, store, ledger, pool, sleeps


TASK = MiningTask(round_id=3, task_id="r3-s1", details={"shard": 1})


def test_happy_path_commits_and_promotes_residual(tmp_path: Path) -> None:
    coordinator, store, ledger, pool, _ = make(tmp_path)
    record = coordinator.execute(TASK)
    assert record.state is TxState.COMMITTED
    assert record.chain_tx == "T1"
    assert record.cid in store.pinned
    assert ledger.submissions[3].cid == record.cid
    assert pool.completed == ["r3-s1"] and pool.released == []
    assert torch.equal(coordinator.residuals.load()["w"], torch.full((2, 2), 3.0))
    stats = coordinator.stats()
    assert stats["committed"] == 1 and stats["success_rate"] == 1.0
    assert stats["last_training"] == {"loss": 1.5}


def test_training_failure_fails_without_storing(tmp_path: Path) -> None:
    trainer = FakeTrainer(fail=RuntimeError("boom"))
    coordinator, store, ledger, pool, _ = make(tmp_path, trainer=trainer)
    with pytest.raises(TransactionError) as info:
        coordinator.execute(TASK)
    assert info.value.state == "FAILED"
    assert store.pinned == {} and ledger.submit_calls == 0
    assert pool.released == ["r3-s1"]
    assert coordinator.residuals.load() == {}


def test_storage_failure_rolls_back_and_unpins(tmp_path: Path) -> None:
    store = FakeStore(failures=[OSError(5, "disk broke")])
    coordinator, store, ledger, pool, sleeps = make(tmp_path, store=store)
    with pytest.raises(TransactionError) as info:
        coordinator.execute(TASK)
    assert info.value.state == "ROLLED_BACK"
    assert store.pinned == {}, "nothing may stay pinned"
    assert len(store.unpinned) == 1
    assert sleeps == [], "a non-retryable storage error is not retried"
    assert pool.released == ["r3-s1"] and ledger.submit_calls == 0
    assert not any((tmp_path / "residual").glob("*staged*"))
    record = coordinator.journal.get(info.value.tx_id)
    assert record is not None and record.error_kind == "NodeError"


def test_retryable_storage_error_is_retried_with_backoff(tmp_path: Path) -> None:
    store = FakeStore(failures=[httpx.ConnectError("down"), httpx.ConnectError("down")])
    coordinator, store, _, _, sleeps = make(tmp_path, store=store)
    assert coordinator.execute(TASK).state is TxState.COMMITTED
    assert sleeps == [0.01, 0.02]


def test_chain_unreachable_retries_then_rolls_back(tmp_path: Path) -> None:
    ledger = FakeLedger(failures=[httpx.ConnectError("refused")] * 3)
    coordinator, store, ledger, pool, sleeps = make(tmp_path, ledger=ledger)
    with pytest.raises(TransactionError) as info:
        coordinator.execute(TASK)
    assert info.value.state == "ROLLED_BACK"
    assert ledger.submit_calls == 3 and sleeps == [0.01, 0.02]
    assert store.pinned == {} and pool.released == ["r3-s1"]
    assert coordinator.stats()["rollbacks"] == 1
    # the chain comes back: the next attempt mines normally
    assert coordinator.execute(TASK).state is TxState.COMMITTED


def test_auth_error_is_not_retried(tmp_path: Path) -> None:
    request = httpx.Request("POST", "http://chain/tx")
    denied = httpx.HTTPStatusError(
        "denied", request=request, response=httpx.Response(401, request=request)
    )
    coordinator, _, ledger, _, sleeps = make(tmp_path, ledger=FakeLedger(failures=[denied]))
    with pytest.raises(TransactionError):
        coordinator.execute(TASK)
    assert ledger.submit_calls == 1 and sleeps == []
    record = coordinator.journal.recent(1)[0]
    assert record.error_kind == "AuthenticationError"


def test_landed_submission_is_never_sent_twice(tmp_path: Path) -> None:
    ledger = FakeLedger()
    ledger.land_then_fail = True
    coordinator, _, ledger, _, _ = make(tmp_path, ledger=ledger)
    record = coordinator.execute(TASK)
    assert record.state is TxState.COMMITTED
    assert ledger.submit_calls == 1, "the retry must find the landed submission"


def test_other_submission_for_round_refuses(tmp_path: Path) -> None:
    ledger = FakeLedger()
    ledger.submissions[3] = SubmissionRef(cid="bafyother", digest="00")
    coordinator, store, ledger, _, _ = make(tmp_path, ledger=ledger)
    with pytest.raises(TransactionError, match="refusing to submit twice"):
        coordinator.execute(TASK)
    assert ledger.submit_calls == 0 and store.pinned == {}


def test_keyboard_interrupt_rolls_back_then_propagates(tmp_path: Path) -> None:
    ledger = FakeLedger(failures=[KeyboardInterrupt()])  # type: ignore[list-item]
    coordinator, store, _, pool, _ = make(tmp_path, ledger=ledger)
    with pytest.raises(KeyboardInterrupt):
        coordinator.execute(TASK)
    assert store.pinned == {} and pool.released == ["r3-s1"]
    assert coordinator.journal.recent(1)[0].state is TxState.ROLLED_BACK


def _crash_in(
    coordinator: AtomicMiningCoordinator,
    state: TxState,
    cid: str | None,
    *,
    preexisting: bool = False,
) -> str:
    """Simulate a process that died with its transaction in `state`."""
    tx_id = "r3-crashed"
    coordinator.journal.begin(tx_id=tx_id, round_id=3, task={"task_id": "r3-s1"})
    order = [TxState.TRAINING, TxState.IPFS_UPLOAD, TxState.BLOCKCHAIN_SUBMIT]
    order += [TxState.TASK_COMPLETE]
    for step in order[: order.index(state) + 1]:
        fields: dict[str, object] = {}
        if step is TxState.IPFS_UPLOAD:
            fields = {"cid": cid, "digest": "d", "cid_preexisting": int(preexisting)}
        coordinator.journal.advance(tx_id, step, **fields)
    coordinator.residuals.stage(tx_id, {"w": torch.ones(1)})
    return tx_id


def test_recover_commits_when_chain_holds_submission(tmp_path: Path) -> None:
    coordinator, _, ledger, pool, _ = make(tmp_path)
    tx_id = _crash_in(coordinator, TxState.BLOCKCHAIN_SUBMIT, "bafyX")
    ledger.submissions[3] = SubmissionRef(cid="bafyX", digest="d", chain_tx="T9")
    # a new coordinator over the same files, as after a restart
    restarted, _, _, _, _ = make(tmp_path, ledger=ledger)
    [record] = restarted.recover()
    assert record.state is TxState.COMMITTED and record.chain_tx == "T9"
    assert ledger.submit_calls == 0
    assert torch.equal(restarted.residuals.load()["w"], torch.ones(1))
    assert restarted.journal.unresolved() == []
    del tx_id, pool


def test_recover_rolls_back_when_chain_lacks_submission(tmp_path: Path) -> None:
    coordinator, store, _, _, _ = make(tmp_path)
    store.pinned["bafyX"] = b"x"
    _crash_in(coordinator, TxState.BLOCKCHAIN_SUBMIT, "bafyX")
    restarted, _, ledger, pool, _ = make(tmp_path, store=store)
    [record] = restarted.recover()
    assert record.state is TxState.ROLLED_BACK
    assert store.pinned == {} and pool.released == ["r3-s1"]
    assert restarted.residuals.load() == {}
    assert ledger.submit_calls == 0


def test_recover_training_crash_fails(tmp_path: Path) -> None:
    coordinator, _, _, _, _ = make(tmp_path)
    _crash_in(coordinator, TxState.TRAINING, None)
    [record] = coordinator.recover()
    assert record.state is TxState.FAILED


def test_recover_waits_while_chain_down(tmp_path: Path) -> None:
    class DownLedger(FakeLedger):
        def find_submission(self, *, round_id: int) -> SubmissionRef | None:
            raise httpx.ConnectError("down")

    coordinator, _, _, _, _ = make(tmp_path)
    _crash_in(coordinator, TxState.BLOCKCHAIN_SUBMIT, "bafyX")
    restarted, _, _, _, _ = make(tmp_path, ledger=DownLedger())
    assert restarted.recover() == []
    assert [r.state for r in restarted.journal.unresolved()] == [TxState.BLOCKCHAIN_SUBMIT]


def test_recover_task_complete_commits(tmp_path: Path) -> None:
    coordinator, _, _, pool, _ = make(tmp_path)
    _crash_in(coordinator, TxState.TASK_COMPLETE, "bafyX")
    [record] = coordinator.recover()
    assert record.state is TxState.COMMITTED
    assert pool.completed == ["r3-s1"]


def _real_store(tmp_path: Path) -> tuple[Blockstore, ContentUpdateStore]:
    blocks = Blockstore(tmp_path / "blocks")
    return blocks, ContentUpdateStore(blocks)


def test_rollback_keeps_a_pin_it_did_not_add(tmp_path: Path) -> None:
    blocks, store = _real_store(tmp_path)
    cid = blocks.add_bytes(b"update-r3-s1", pin=True)  # the same bytes, pinned by another
    denied = ValueError("the ledger refused")
    coordinator, _, _, _, _ = make(tmp_path, store=store, ledger=FakeLedger(failures=[denied]))  # type: ignore[arg-type]
    with pytest.raises(TransactionError):
        coordinator.execute(TASK)
    [record] = coordinator.journal.recent(1)
    assert record.state is TxState.ROLLED_BACK and record.cid == cid
    assert record.cid_preexisting, "the journal records that the pin was already there"
    assert blocks.is_pinned(cid)


@pytest.mark.parametrize("preexisting", [True, False])
def test_recovery_after_restart_honours_the_journaled_pin(
    tmp_path: Path, preexisting: bool
) -> None:
    """A killed miner's rollback runs in a new process, with nothing in memory: only the
    journal knows whether the pin was there before."""
    blocks, store = _real_store(tmp_path)
    cid = blocks.add_bytes(b"update-r3-s1", pin=True)
    coordinator, _, _, _, _ = make(tmp_path, store=store)  # type: ignore[arg-type]
    _crash_in(coordinator, TxState.BLOCKCHAIN_SUBMIT, cid, preexisting=preexisting)
    coordinator.journal.close()
    _, fresh = _real_store(tmp_path)
    restarted, _, ledger, _, _ = make(tmp_path, store=fresh)  # type: ignore[arg-type]
    [record] = restarted.recover()
    assert record.state is TxState.ROLLED_BACK and ledger.submit_calls == 0
    assert blocks.is_pinned(cid) is preexisting


def test_journal_gains_the_pin_column_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before cid_preexisting existed
        db.execute(
            "CREATE TABLE transactions (tx_id TEXT PRIMARY KEY, round_id INTEGER NOT NULL,"
            " task_json TEXT NOT NULL, state TEXT NOT NULL, cid TEXT, digest TEXT,"
            " chain_tx TEXT, error TEXT, error_kind TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
            " created_at REAL NOT NULL, updated_at REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO transactions VALUES ('t', 1, '{}', 'IPFS_UPLOAD', 'bafyX', 'd',"
            " NULL, NULL, NULL, 0, 1.0, 1.0)"
        )
    journal = Journal(path)
    [record] = journal.unresolved()
    assert record.cid == "bafyX" and record.cid_preexisting is False
    journal.close()


def test_a_trace_is_stored_and_committed_with_the_submission(tmp_path: Path) -> None:
    class TracingTrainer(FakeTrainer):
        def train(self, task: MiningTask) -> TrainedUpdate:
            plain = super().train(task)
            return dataclasses.replace(plain, trace_payload=b"trace-bytes", trace_root="ab" * 32)

    coordinator, store, ledger, _, _ = make(tmp_path, trainer=TracingTrainer())
    record = coordinator.execute(TASK)
    assert record.state is TxState.COMMITTED
    cid, root = ledger.trace
    assert root == "ab" * 32 and store.pinned[cid] == b"trace-bytes"
    # without a trace nothing is committed for it
    coordinator, _, ledger, _, _ = make(tmp_path / "plain")
    coordinator.execute(TASK)
    assert ledger.trace == ("", "")
