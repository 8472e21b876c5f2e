"""SIGKILL a real devnet process mid-flight; it must resume with every committed tx."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chain.chain_harness import key
from support.net import free_port

from r3mes.chain.client import BlockchainClient
from r3mes.chain.devnet import db_path, devnet_genesis, init_devnet
from r3mes.chain.msgs import TransferCredits
from r3mes.chain.store import BlockStore
from r3mes.paths import Home

A, B = key(1), key(2)


def launch(home: Home, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "r3mes.chain.devnet",
        "--home",
        str(home.root),
        "--port",
        str(port),
        "--block-interval",
        "0.05",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(client: BlockchainClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "devnet process exited"
        try:
            client.status()
            return
        except Exception:
            time.sleep(0.1)
    raise AssertionError("devnet did not come up")


@pytest.mark.slow
def test_sigkill_then_restart_keeps_committed_state(tmp_path: Path) -> None:
    home = Home(root=tmp_path)
    init_devnet(home, devnet_genesis(accounts={A.address: 1_000_000}))
    port = free_port()
    committed: dict[str, int] = {}
    last_height, last_app_hash = 0, ""
    for cycle in range(3):
        proc = launch(home, port)
        client = BlockchainClient(f"http://127.0.0.1:{port}", timeout_s=30, retries=0)
        try:
            wait_ready(client, proc)
            status = client.status()
            assert status.height >= last_height
            if last_height:
                results = client._rpc("block_results", height=last_height)
                app_hash = base64.b64decode(results["app_hash"]).hex().upper()  # CometBFT's bytes
                assert app_hash == last_app_hash
            for tx_hash, height in committed.items():
                found = client.tx(tx_hash)
                assert found is not None and found.height == height and found.code == 0
            for i in range(4):
                msg = TransferCredits(creator=A.address, to=B.address, amount=cycle * 10 + i + 1)
                done = client.sign_and_broadcast(A, [msg], timeout_s=10)
                committed[done.hash] = done.height
            # Keep submitting without waiting, then kill at an arbitrary moment mid-stream.
            for _ in range(5):
                client.sign_and_broadcast(
                    A, [TransferCredits(creator=A.address, to=B.address, amount=1)], wait=False
                )
            time.sleep(0.03 * (cycle + 1))
            status = client.status()
            last_height, last_app_hash = status.height, status.app_hash
        finally:
            if proc.poll() is None:  # it may have died already (then say why above)
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            client.close()
    store = BlockStore(db_path(home))
    state = store.load_state()
    assert state.height >= last_height
    assert all(stored == recomputed for _, stored, recomputed in store.replay())
    assert state.accounts[A.address].sequence >= 12
    total = sum(a.balance for a in state.accounts.values())
    assert total == 1_000_000
    store.close()
