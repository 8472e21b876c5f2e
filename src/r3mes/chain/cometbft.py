"""Running a CometBFT network on one machine: per validator, one `cometbft node` beside one
`r3mes chain abci` process (used by `r3mes up --engine cometbft`, the tests and the
benchmark).

Each process writes its log to its home (`cometbft.log`, `abci.log`). Stopping is by pid
(SIGTERM, then SIGKILL after a grace period); `kill_*` sends SIGKILL at once, as a crash.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from r3mes.chain.errors import ChainError
from r3mes.chain.genesis import Genesis
from r3mes.chain.testnet import NodePorts, TestnetNode
from r3mes.runtime.net import free_port

PINNED_VERSION = "0.38.26"


class CometbftNotInstalled(ChainError):
    """No `cometbft` binary: run `bash scripts/cometbft.sh`."""


def find_cometbft(extra_dirs: Sequence[Path] = ()) -> str:
    """Path of `cometbft`: PATH first, then `extra_dirs` (e.g. Go's bin folder)."""
    found = shutil.which("cometbft")
    if found:
        return found
    for folder in extra_dirs:
        candidate = folder / "cometbft"
        if candidate.is_file():
            return str(candidate)
    raise CometbftNotInstalled(
        f"cometbft {PINNED_VERSION} is not installed; run `bash scripts/cometbft.sh` and put "
        "$(go env GOPATH)/bin on PATH"
    )


@dataclass
class NodeProcesses:
    """The two processes of one validator (either may be None: not running)."""

    node: TestnetNode
    cometbft: subprocess.Popen[bytes] | None = None
    app: subprocess.Popen[bytes] | None = None
    logs: list[IO[bytes]] = field(default_factory=list)


class CometbftNetwork:
    """Start, crash, restart and stop the validators of a testnet written by write_testnet."""

    def __init__(
        self,
        nodes: Sequence[TestnetNode],
        *,
        binary: str,
        app_command: Sequence[str] | None = None,
    ) -> None:
        self.binary = binary
        self.app_command = list(app_command or [sys.executable, "-m", "r3mes.cli.main"])
        self.procs = [NodeProcesses(n) for n in nodes]
        self._http = httpx.Client(timeout=2.0)

    @property
    def nodes(self) -> list[TestnetNode]:
        return [p.node for p in self.procs]

    def start_app(self, i: int, *, extra: Sequence[str] = ()) -> None:
        p = self.procs[i]
        log = (p.node.home / "abci.log").open("ab")
        p.logs.append(log)
        cmd = [
            *self.app_command,
            "chain",
            "abci",
            "--home",
            str(p.node.home),
            "--address",
            p.node.abci_address,
            *extra,
        ]
        p.app = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self._wait_port(p.node.ports.abci, p.app, "ABCI app")

    def start_cometbft(self, i: int) -> None:
        p = self.procs[i]
        log = (p.node.home / "cometbft.log").open("ab")
        p.logs.append(log)
        cmd = [self.binary, "node", "--home", str(p.node.home)]
        p.cometbft = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def start(self, i: int | None = None, *, app_extra: Sequence[str] = ()) -> None:
        """Start validator `i` (app first, then CometBFT), or all of them."""
        for j in range(len(self.procs)) if i is None else [i]:
            self.start_app(j, extra=app_extra)
        for j in range(len(self.procs)) if i is None else [i]:
            self.start_cometbft(j)

    def _wait_port(self, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
        import socket

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ChainError(f"{what} exited with {proc.returncode} before listening")
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise ChainError(f"{what} did not listen on port {port} within 60 s")

    def kill_app(self, i: int) -> None:
        self._signal(self.procs[i].app, signal.SIGKILL)
        self.procs[i].app = None

    def kill_cometbft(self, i: int) -> None:
        self._signal(self.procs[i].cometbft, signal.SIGKILL)
        self.procs[i].cometbft = None

    def kill(self, i: int) -> None:
        """Crash validator `i`: SIGKILL both processes."""
        self.kill_cometbft(i)
        self.kill_app(i)

    def stop(self, i: int | None = None, grace_s: float = 10.0) -> None:
        for j in range(len(self.procs)) if i is None else [i]:
            p = self.procs[j]
            for proc in (p.cometbft, p.app):
                self._signal(proc, signal.SIGTERM, grace_s=grace_s)
            p.cometbft = p.app = None
            for log in p.logs:
                log.close()
            p.logs.clear()

    def close(self) -> None:
        self.stop()
        self._http.close()

    @staticmethod
    def _signal(
        proc: subprocess.Popen[bytes] | None, sig: signal.Signals, grace_s: float = 10.0
    ) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    # -- reading the nodes ------------------------------------------------------------

    def rpc(self, i: int, method: str, **params: str) -> dict[str, object] | None:
        """`result` of a GET JSON-RPC call to node `i`, or None if it does not answer."""
        try:
            doc = self._http.get(f"{self.procs[i].node.rpc_url}/{method}", params=params).json()
        except (httpx.HTTPError, ValueError):
            return None
        result = doc.get("result") if isinstance(doc, dict) else None
        return result if isinstance(result, dict) else None

    def height(self, i: int) -> int:
        """Node `i`'s latest committed height (-1 if it does not answer)."""
        status = self.rpc(i, "status")
        if status is None:
            return -1
        sync = status["sync_info"]
        assert isinstance(sync, dict)
        return int(sync["latest_block_height"])

    def app_hash_after(self, i: int, height: int) -> str | None:
        """The app hash after block `height` on node `i` (header of block height+1)."""
        block = self.rpc(i, "block", height=str(height + 1))
        if block is None:
            return None
        inner = block["block"]
        assert isinstance(inner, dict)
        return str(inner["header"]["app_hash"])

    def wait_height(
        self, height: int, *, nodes: Sequence[int] | None = None, timeout_s: float = 60.0
    ) -> bool:
        """True once every node in `nodes` (default: all) has committed `height`."""
        which = list(range(len(self.procs))) if nodes is None else list(nodes)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.height(i) >= height for i in which):
                return True
            time.sleep(0.2)
        return False


def app_log(node: TestnetNode) -> str:
    return _read(node.home / "abci.log")


def cometbft_log(node: TestnetNode) -> str:
    return _read(node.home / "cometbft.log")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class LedgerProcess:
    """One process of a local CometBFT ledger, for a supervisor to run."""

    name: str
    argv: tuple[str, ...]
    log_path: Path


GATEWAY_NAME = "chain-gateway"


def local_ledger(
    root: Path,
    genesis: Genesis,
    *,
    validators: int,
    gateway_port: int,
    binary: str,
    block_interval_s: float,
    python: str = sys.executable,
) -> list[LedgerProcess]:
    """The processes of an N-validator ledger on loopback (`r3mes up --engine cometbft`).

    Homes are written under `root` once (kept on a rerun, so the chain resumes): each
    validator is `r3mes chain abci` plus `cometbft node`; last comes `r3mes chain rest` on
    `gateway_port` over node0's RPC, the one URL the roles and the backend use.
    """
    from r3mes.chain.testnet import TestnetConfig, load_testnet, write_testnet

    if root.is_dir() and any(root.glob("node*")):
        nodes = load_testnet(root)
    else:
        ms = max(10, int(block_interval_s * 1000))
        config = TestnetConfig(
            validators=validators,
            ports=tuple(
                NodePorts(free_port(), free_port(), free_port()) for _ in range(validators)
            ),
            timeout_commit=f"{ms}ms",
        )
        nodes = write_testnet(root, genesis, config)
    cli = (python, "-m", "r3mes.cli.main", "chain")
    out = []
    for node in nodes:
        abci_argv = (*cli, "abci", "--home", str(node.home), "--address", node.abci_address)
        out.append(LedgerProcess(f"abci-{node.name}", abci_argv, node.home / "abci.log"))
    for node in nodes:
        node_argv = (binary, "node", "--home", str(node.home))
        out.append(LedgerProcess(f"cometbft-{node.name}", node_argv, node.home / "cometbft.log"))
    gateway = (*cli, "rest", "--rpc", nodes[0].rpc_url, "--port", str(gateway_port))
    out.append(LedgerProcess(GATEWAY_NAME, gateway, root / "gateway.log"))
    return out
