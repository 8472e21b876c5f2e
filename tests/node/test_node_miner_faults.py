"""Miner faults against a real devnet and a real blockstore: storage failure, chain
outage, SIGKILL mid-transaction. Each resolves to a rollback or a commit, never a
double submission, and mining resumes."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.devnet import tiny_spec
from support.net import free_port
from support.wait import step_until

from r3mes.chain.devnet import DevnetConfig, DevnetNode
from r3mes.node.launch import RoleLaunch, build_miner
from r3mes.node.localnet.setup import ensure_keys, passphrase, prepare_genesis
from r3mes.node.miner.journal import TxState
from r3mes.node.miner.miner import Miner
from r3mes.node.miner.parts import ContentUpdateStore
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.paths import Home
from r3mes.storage.blockstore import Blockstore


class Net:
    def __init__(self, home: Home, port: int) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.node: DevnetNode | None = None

    def start(self) -> None:
        self.node = DevnetNode(self.home, DevnetConfig(port=self.port, block_interval_s=0.5))
        self.node.start()

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    spec = tiny_spec(tmp_path)
    prepare_genesis(spec, ensure_keys(spec))
    network = Net(spec.home, free_port())
    network.start()
    yield network
    network.stop()


def _miner(net: Net) -> Miner:
    launch = RoleLaunch(
        name="miner-1",
        home=net.home,
        chain_url=net.url,
        key_name="miner-1",
        passphrase=passphrase(net.home),
    )
    return build_miner(launch, retry=RetryPolicy(max_retries=2, initial_delay=0.2))


def _step_until(miner: Miner, done: Callable[[], bool], timeout: float = 150.0) -> None:
    step_until(done, miner.step, timeout=timeout, what="the miner")


def _states(miner: Miner) -> list[TxState]:
    return [r.state for r in miner.journal.recent(100)]


class FailingStore:
    """The real blockstore, whose writes fail with ENOSPC while `broken` is set."""

    def __init__(self, real: Blockstore) -> None:
        self.real = real
        self.broken = True

    def add_bytes(self, data: bytes, *, cid_version: int = 1, pin: bool = True) -> str:
        cid = self.real.add_bytes(data, cid_version=cid_version, pin=pin)  # lands, then...
        if self.broken:
            raise OSError(errno.ENOSPC, "No space left on device")
        return cid

    def get_bytes(self, cid: str, *, max_size: int = 1 << 30) -> bytes:
        return self.real.get_bytes(cid, max_size=max_size)

    def unpin(self, cid: str) -> None:
        self.real.unpin(cid)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_storage_failure_rolls_back_then_mining_resumes(net: Net) -> None:
    miner = _miner(net)
    real = Blockstore(net.home.blocks)
    failing = FailingStore(real)
    miner.coordinator.store = ContentUpdateStore(failing)
    miner.on_start()
    _step_until(miner, lambda: TxState.ROLLED_BACK in _states(miner))
    record = next(r for r in miner.journal.recent(100) if r.state is TxState.ROLLED_BACK)
    assert record.error_kind == "ResourceError"
    assert record.cid not in real.pins(), "nothing stays pinned"
    assert miner.pool.snapshot()["taken"] == 0, "the task was released"
    assert miner.client.submissions(record.round_id) == []
    from fastapi.testclient import TestClient

    from r3mes.node.runtime.http import create_app

    with TestClient(create_app(miner)) as http:
        assert http.get(f"/transaction/{record.tx_id}").json()["state"] == "ROLLED_BACK"
        assert http.get("/transaction/nope").status_code == 404
        stats = http.get("/stats").json()["atomic_coordinator"]
        assert stats["rollbacks"] >= 1 and stats["success_rate"] == 0.0
        assert "r3mes_miner_transactions_total" in http.get("/metrics").text
    failing.broken = False
    _step_until(miner, lambda: TxState.COMMITTED in _states(miner))
    committed = next(r for r in miner.journal.recent(100) if r.state is TxState.COMMITTED)
    assert committed.cid in real.pins()
    miner.on_stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chain_outage_retries_rolls_back_and_resumes(net: Net) -> None:
    miner = _miner(net)
    miner.on_start()
    real_train = miner.trainer.train

    def train_then_lose_chain(task):  # type: ignore[no-untyped-def]
        update = real_train(task)
        net.stop()  # the ledger goes away between training and submission
        return update

    miner.coordinator.trainer = type("T", (), {"train": staticmethod(train_then_lose_chain)})()
    _step_until(miner, lambda: net.node is None)
    [record] = miner.journal.recent(1)
    assert record.state is TxState.ROLLED_BACK and record.error_kind == "NetworkError"
    assert record.cid not in Blockstore(net.home.blocks).pins()
    net.start()
    miner.coordinator.trainer = miner.trainer
    _step_until(miner, lambda: TxState.COMMITTED in _states(miner))
    miner.on_stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_transaction_is_resolved_on_restart(net: Net) -> None:
    env = {**os.environ, "R3MES_PASSPHRASE": passphrase(net.home)}
    argv = [sys.executable, "-m", "r3mes.cli.main", "miner", "start", "--key", "miner-1"]
    argv += ["--chain", net.url, "--home", str(net.home.root)]
    journal = net.home.root / "nodes" / "miner-miner-1" / "journal.sqlite"
    in_flight = ("TRAINING", "IPFS_UPLOAD", "BLOCKCHAIN_SUBMIT", "TASK_COMPLETE")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_in = None
    try:
        deadline = time.monotonic() + 150
        while killed_in is None:
            assert proc.poll() is None and time.monotonic() < deadline
            rows = []
            if journal.exists():
                try:
                    with sqlite3.connect(journal) as db:
                        rows = db.execute(
                            "SELECT state FROM transactions WHERE state IN (?,?,?,?)", in_flight
                        ).fetchall()
                except sqlite3.OperationalError:
                    rows = []  # the miner is still creating its journal
                if rows:
                    proc.send_signal(signal.SIGKILL)
                    killed_in = rows[0][0]
            time.sleep(0.005)
        proc.wait(10)
        restarted = _miner(net)
        resolved = restarted.coordinator.recover()
        assert resolved, f"the transaction killed in {killed_in} was resolved"
        assert restarted.journal.unresolved() == []
        for record in resolved:
            subs = [
                s
                for s in restarted.client.submissions(record.round_id)
                if s.miner == restarted.address
            ]
            assert len(subs) <= 1, "never submitted twice"
            if record.state is TxState.COMMITTED:
                assert subs and subs[0].cid == record.cid
            else:
                assert record.cid not in Blockstore(net.home.blocks).pins() or subs
        restarted.on_start()
        _step_until(restarted, lambda: TxState.COMMITTED in _states(restarted))
        restarted.on_stop()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", ["IPFS_UPLOAD", "BLOCKCHAIN_SUBMIT"])
def test_sigkill_after_upload_or_broadcast(net: Net, point: str) -> None:
    """Killed right after the upload, the transaction rolls back and unpins; killed right
    after the broadcast, it commits on restart and keeps its pin. Either way the chain
    holds at most one submission of this miner for the round, and mining goes on."""
    env = {
        **os.environ,
        "R3MES_PASSPHRASE": passphrase(net.home),
        "R3MES_TEST_PAUSE_AFTER": point,  # test-only fault injection
    }
    argv = [sys.executable, "-m", "r3mes.cli.main", "miner", "start", "--key", "miner-1"]
    argv += ["--chain", net.url, "--home", str(net.home.root)]
    marker = net.home.root / "nodes" / "miner-miner-1" / f"paused-after-{point}"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 150
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    restarted = _miner(net)
    [killed] = restarted.journal.unresolved()
    assert killed.state.value == point and killed.cid is not None
    blocks = Blockstore(net.home.blocks)
    assert blocks.is_pinned(killed.cid), "the upload had finished"

    def ours(round_id: int) -> list[str]:
        subs = restarted.client.submissions(round_id)
        return [s.cid for s in subs if s.miner == restarted.address]

    broadcast = point == "BLOCKCHAIN_SUBMIT"
    assert ours(killed.round_id) == ([killed.cid] if broadcast else [])
    [resolved] = restarted.coordinator.recover()
    assert resolved.state is (TxState.COMMITTED if broadcast else TxState.ROLLED_BACK)
    assert blocks.is_pinned(killed.cid) is broadcast
    assert ours(killed.round_id) == ([killed.cid] if broadcast else [])
    restarted.on_start()
    _step_until(restarted, lambda: _states(restarted).count(TxState.COMMITTED) == 1 + broadcast)
    for record in restarted.journal.recent(10):
        assert len(ours(record.round_id)) <= 1, "never submitted twice"
    restarted.on_stop()
