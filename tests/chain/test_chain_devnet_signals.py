"""A real devnet process stops cleanly on SIGTERM, SIGINT and SIGHUP alike: it finishes the
block in progress, closes the store, removes its pid file and exits 0; `r3mes devnet stop`
from another process relies on that."""

from __future__ import annotations

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
from r3mes.chain.devnet import (
    DevnetConfig,
    DevnetNode,
    devnet_genesis,
    init_devnet,
    pid_path,
    running_devnet,
    spawn_devnet,
)
from r3mes.chain.msgs import TransferCredits
from r3mes.paths import Home

A, B = key(1), key(2)
CLI = [sys.executable, "-m", "r3mes.cli.main"]


def wait_serving(home: Home, client: BlockchainClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"devnet exited with {proc.returncode}"
        if running_devnet(home) is not None:
            client.status()
            return
        time.sleep(0.05)
    raise AssertionError("devnet did not come up")


def assert_closed_cleanly(home: Home, committed_height: int) -> None:
    """No pid file, and the chain directory can be opened again with every committed block."""
    assert not pid_path(home).exists()
    node = DevnetNode(home, DevnetConfig(port=free_port()))  # takes the chain LOCK
    try:
        assert node.engine.state.height >= committed_height
        assert node.engine.state.accounts[B.address].balance == 5
    finally:
        node.stop()


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_foreground_devnet_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    home = Home(root=tmp_path)
    init_devnet(home, devnet_genesis(accounts={A.address: 1_000}))
    port = free_port()
    args = ["devnet", "start", "--home", str(tmp_path), "--port", str(port)]
    proc = subprocess.Popen(
        [*CLI, *args, "--block-interval", "0.05"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with BlockchainClient(f"http://127.0.0.1:{port}", timeout_s=30, retries=0) as client:
            wait_serving(home, client, proc)
            msg = TransferCredits(creator=A.address, to=B.address, amount=5)
            height = client.sign_and_broadcast(A, [msg]).height
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr and b"Aborted" not in stderr
    assert_closed_cleanly(home, height)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_background_devnet_process_exits_0_on_any_stop_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    home = Home(root=tmp_path)
    init_devnet(home, devnet_genesis(accounts={A.address: 1_000}))
    port = free_port()
    proc = spawn_devnet(home, DevnetConfig(port=port, block_interval_s=0.05))
    try:
        with BlockchainClient(f"http://127.0.0.1:{port}", timeout_s=30, retries=0) as client:
            wait_serving(home, client, proc)
            msg = TransferCredits(creator=A.address, to=B.address, amount=5)
            height = client.sign_and_broadcast(A, [msg]).height
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 0, (home.logs / "devnet.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (home.logs / "devnet.log").read_text()
    assert f"signal {int(sig)} received" in log and "Traceback" not in log
    assert_closed_cleanly(home, height)


def test_detached_devnet_stopped_from_another_process(tmp_path: Path) -> None:
    home = Home(root=tmp_path)
    init_devnet(home, devnet_genesis(accounts={A.address: 1_000}))
    port = free_port()
    home_args = ["--home", str(tmp_path)]
    start = [*CLI, "devnet", "start", "--detach", "--port", str(port), "--block-interval", "0.05"]
    started = subprocess.run([*start, *home_args], capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    # waiting for the server to come up is not a failure: no "failed ... retrying" lines
    # (only a start slower than the patience of 10 s would say it is still waiting)
    for noise in ("failed", "retrying", "refused", "Traceback"):
        assert noise not in started.stderr, started.stderr
    assert started.stdout.startswith("devnet running in the background"), started.stdout
    info = running_devnet(home)
    assert info is not None
    try:
        with BlockchainClient(info["url"], timeout_s=30, retries=0) as client:
            msg = TransferCredits(creator=A.address, to=B.address, amount=5)
            height = client.sign_and_broadcast(A, [msg]).height
        stopped = subprocess.run(
            [*CLI, "devnet", "stop", *home_args], capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stderr
        assert f"devnet (pid {info['pid']}) stopped" in stopped.stdout
    finally:
        if running_devnet(home) is not None:
            os.kill(int(info["pid"]), signal.SIGKILL)
    log = (home.logs / "devnet.log").read_text()
    assert "stopping the devnet" in log and "devnet stopped at height" in log
    assert "Traceback" not in log
    assert_closed_cleanly(home, height)
    again = subprocess.run(
        [*CLI, "devnet", "stop", *home_args], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "no devnet is running" in again.stdout


def test_a_handler_bug_stops_block_production_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from r3mes.chain import handlers
    from r3mes.chain.tx import build_tx

    def broken(state: object, msg: object, ctx: object) -> list[object]:
        raise KeyError("handler bug")

    monkeypatch.setitem(handlers.HANDLERS, TransferCredits, broken)
    home = Home(root=tmp_path)
    init_devnet(home, devnet_genesis(accounts={A.address: 1_000}))
    node = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.05))
    node.start()
    try:
        msg = TransferCredits(creator=A.address, to=B.address, amount=5)
        raw = build_tx([msg], key=A, chain_id="r3mes-devnet-1", account_number=1, sequence=0)
        assert node.engine.submit(raw).code == 0
        deadline = time.monotonic() + 60
        while node.block_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isinstance(node.block_error, KeyError)
        height = node.engine.state.height
        time.sleep(0.3)
        assert node.engine.state.height == height  # no block past the bug
        assert B.address not in node.engine.state.accounts
    finally:
        node.stop()
