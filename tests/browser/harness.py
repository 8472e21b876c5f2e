"""A whole local network for the browser tests: `r3mes up` (ledger, storage, miner, validator,
proposer, serving node) plus the backend serving the dashboard, each a real process.

`r3mes up` starts the backend itself and prints the dashboard's URL. Nothing is mocked: the
browser talks to the backend, the backend to the ledger and the serving node.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from support.net import free_port
from support.process import OutputWatcher

from r3mes.chain.client import BlockchainClient
from r3mes.chain.crypto import SigningKey
from r3mes.chain.msgs import Faucet, Msg, TransferCredits

URL = re.compile(r"https?://[0-9A-Za-z.:\-\[\]]+")
READY_TIMEOUT_S = 420
BACKEND_TIMEOUT_S = 90


@dataclass
class Network:
    home: Path
    rpc: str
    """The ledger's RPC URL."""
    backend: str
    """The backend's (and dashboard's) base URL, no trailing slash."""
    deposit_address: str
    watchers: list[OutputWatcher] = field(default_factory=list)

    def client(self) -> BlockchainClient:
        return BlockchainClient(self.rpc)

    def fund(self, key: SigningKey, amount: int) -> None:
        """Mint devnet credits to `key` on the ledger (its own faucet transaction)."""
        self.send(key, [Faucet(creator=key.address, to=key.address, amount=amount)])

    def deposit(self, key: SigningKey, amount: int) -> None:
        """Send `amount` from `key` to the backend's deposit address on the ledger."""
        transfer = TransferCredits(creator=key.address, to=self.deposit_address, amount=amount)
        self.send(key, [transfer])

    def send(self, key: SigningKey, msgs: list[Msg]) -> None:
        client = self.client()
        try:
            client.sign_and_broadcast(key, msgs, timeout_s=60)
        finally:
            client.close()

    def logs(self) -> str:
        return "\n\n".join(w.text[-6000:] for w in self.watchers)


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "r3mes.cli.main", *args]


def _line_url(watcher: OutputWatcher, needle: str, *, timeout: float) -> str:
    line = watcher.wait_for(needle, timeout=timeout)
    found = URL.search(line)
    assert found, f"no URL in {line!r}"
    return found.group(0).rstrip("/")


def _wait_healthy(url: str, watcher: OutputWatcher, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watcher.proc.poll() is not None:
            raise AssertionError(f"the backend exited:\n{watcher.text}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the backend at {url} did not answer within {timeout} s:\n{watcher.text}")


def _stop(proc: subprocess.Popen[bytes], *, timeout: float = 60) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def running_network(home: Path, *, round_blocks: int = 8) -> Iterator[Network]:
    """`r3mes up` with the tiny model, one miner, a serving node and the backend."""
    env = {**os.environ, "R3MES_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    argv = ["up", "--base-model", "tiny", "--miners", "1", "--headless", "--chain-port", "0"]
    argv += ["--backend-port", "0", "--round-blocks", str(round_blocks)]
    argv += ["--block-interval", "0.5"]
    up = OutputWatcher(
        subprocess.Popen(_python(*argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    )
    try:
        up.wait_for("network ready", timeout=READY_TIMEOUT_S)
        rpc = _line_url(up, "chain RPC:", timeout=30)
        backend = _line_url(up, "web dashboard", timeout=BACKEND_TIMEOUT_S)
        _wait_healthy(backend, up, timeout=BACKEND_TIMEOUT_S)
        yield Network(
            home=home,
            rpc=rpc,
            backend=backend,
            deposit_address=_deposit_address(home),
            watchers=[up],
        )
    finally:
        _stop(up.proc, timeout=120)


def _deposit_address(home: Path) -> str:
    """Where the backend of `home` credits deposits from (its treasury key, as it reads it)."""
    from r3mes.backend.services.deposits import deposit_address
    from r3mes.backend.settings import BackendSettings

    address = deposit_address(BackendSettings(home=home))
    assert address, "the backend of this network has no deposit address"
    return address


@contextmanager
def running_backend(home: Path, *, chain: str | None = None) -> Iterator[tuple[str, OutputWatcher]]:
    """The backend alone: following the ledger at `chain`, or none (for page tests that need
    no network)."""
    port = free_port()
    env = {**os.environ, "R3MES_HOME": str(home)}
    argv = ["backend", "start", "--home", str(home), "--port", str(port)]
    if chain is None:
        env["R3MES_FOLLOW_CHAIN"] = "false"
    else:
        argv += ["--chain", chain]
    watcher = OutputWatcher(
        subprocess.Popen(
            _python(*argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, watcher, timeout=BACKEND_TIMEOUT_S)
        yield url, watcher
    finally:
        _stop(watcher.proc)
