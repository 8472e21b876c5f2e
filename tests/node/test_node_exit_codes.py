"""Every long-running node command exits 0 on a clean stop, whether SIGTERM or SIGINT asked
for it, and whether it was asked while the role was still starting or already working.

Real `r3mes <role> start` processes against a real devnet; every wait is on a condition
(the pid file, `/health`), never on a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.devnet import running_devnet, tiny_spec

from r3mes.node.localnet.setup import passphrase
from r3mes.paths import Home
from r3mes.runtime.pidfile import pid_path, read_pid_file

ROLES = (
    ("miner", "miner", "miner-1"),
    ("validator", "validator", "validator-1"),
    ("proposer", "proposer", "proposer-1"),
    ("serving-node", "serving", "serving-1"),
)
READY_S = 240.0
"""Start-up of four torch processes on a busy 2-core machine: generous, but a bound."""


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, str]]:
    spec = tiny_spec(tmp_path_factory.mktemp("exitcodes"), serving=True, dataset_chars=20_000)
    with running_devnet(spec, block_interval_s=0.5) as running:
        yield running


def _start(
    home: Home, url: str, command: str, name: str, *, start_delay: float = 0.0
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "R3MES_PASSPHRASE": passphrase(home),
        "R3MES_TEST_START_DELAY": str(start_delay),
    }
    argv = [sys.executable, "-m", "r3mes.cli.main", command, "start", "--key", name]
    argv += ["--name", name, "--chain", url, "--home", str(home.root)]
    if command == "miner":
        argv += ["--stake", "10"]
    home.logs.mkdir(parents=True, exist_ok=True)
    with (home.logs / f"exit-{name}.out").open("ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def _health(home: Home, role: str, name: str) -> str | None:
    try:
        info = read_pid_file(pid_path(home.run, role, name))
    except Exception:  # noqa: BLE001 - a pid file being written is simply not up yet
        return None
    if info is None:
        return None
    try:
        status = httpx.get(f"{info.url}/health", timeout=5).json().get("status")
    except (httpx.HTTPError, ValueError):
        return None
    return str(status)


def _wait_for_status(
    home: Home, procs: dict[tuple[str, str], subprocess.Popen[bytes]], want: str
) -> None:
    deadline = time.monotonic() + READY_S
    waiting = set(procs)
    while waiting:
        for (_, name), proc in procs.items():
            assert proc.poll() is None, f"{name} exited early ({proc.returncode}); see logs"
        waiting = {key for key in waiting if _health(home, *key) != want}
        assert time.monotonic() < deadline, f"not {want!r} in time: {sorted(waiting)}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_every_role_exits_0_on_a_clean_stop(chain: tuple[Home, str], signum: int) -> None:
    home, url = chain
    procs = {(role, name): _start(home, url, cmd, name) for cmd, role, name in ROLES}
    try:
        _wait_for_status(home, procs, "ok")
        for proc in procs.values():
            proc.send_signal(signum)
        codes = {name: proc.wait(120) for (_, name), proc in procs.items()}
        assert codes == dict.fromkeys(codes, 0), codes
        for role, name in procs:
            assert not pid_path(home.run, role, name).exists(), f"{name} left its pid file"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_during_start_up_exits_0(chain: tuple[Home, str], signum: int) -> None:
    """A role asked to stop before it is ready (here held in start-up by the test-only
    delay) stops at once, without registering or working, and exits 0."""
    home, url = chain
    proc = _start(home, url, "validator", "validator-1", start_delay=600)
    try:
        _wait_for_status(home, {("validator", "validator-1"): proc}, "starting")
        proc.send_signal(signum)
        assert proc.wait(60) == 0
        assert not pid_path(home.run, "validator", "validator-1").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "r3mes.cli.main", *args]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_exits_0_when_stopped_while_roles_start(tmp_path: Path, signum: int) -> None:
    """`r3mes up` stopped before its roles are ready (and so before `--rounds` is reached)
    stops every child and exits 0."""
    env = {**os.environ, "R3MES_HOME": str(tmp_path), "R3MES_TEST_START_DELAY": "600"}
    args = ["--base-model", "tiny", "--miners", "1", "--no-serving", "--headless"]
    args += ["--chain-port", "0", "--backend-port", "0", "--round-blocks", "8"]
    args += ["--block-interval", "0.5"]
    up = subprocess.Popen(
        _cli("up", *args, "--rounds", "1"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        home = Home(root=tmp_path)
        deadline = time.monotonic() + READY_S
        while _health(home, "proposer", "proposer-1") != "starting":
            assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
            assert time.monotonic() < deadline, "the proposer never started"
            time.sleep(0.2)
        up.send_signal(signum)
        assert up.wait(120) == 0, up.stdout.read().decode() if up.stdout else ""
        output = up.stdout.read().decode() if up.stdout else ""
        assert "network ready" not in output
        assert list((tmp_path / "run").glob("*.pid")) == []
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
