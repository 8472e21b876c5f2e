"""`r3mes up` end to end: a devnet, honest and cheating miners, a validator and a proposer,
each a real process on 127.0.0.1, for three adapter versions."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.process import OutputWatcher
from support.wait import wait_until

from r3mes.node.localnet.dashboard import Snapshot
from r3mes.node.localnet.network import UpOptions, check_children, run_network
from r3mes.node.localnet.setup import NetworkSpec
from r3mes.node.runtime.supervisor import ProcessSpec, Supervisor
from r3mes.paths import Home
from r3mes.runtime.pidfile import list_services


def _spawn(supervisor: Supervisor, tmp_path: Path, name: str, code: str) -> None:
    argv = (sys.executable, "-c", code)
    supervisor.spawn(ProcessSpec(name=name, argv=argv, log_path=tmp_path / f"{name}.log"))


def _wait_exited(supervisor: Supervisor, names: set[str]) -> None:
    wait_until(lambda: names <= {n for n, _ in supervisor.exited()}, timeout=60, what=str(names))


def test_up_stops_when_every_role_process_or_the_ledger_died(tmp_path: Path) -> None:
    supervisor = Supervisor()
    _spawn(supervisor, tmp_path, "devnet", "import time; time.sleep(60)")
    _spawn(supervisor, tmp_path, "miner-1", "raise SystemExit(3)")
    _spawn(supervisor, tmp_path, "validator-1", "import time; time.sleep(60)")
    roles, reported = {"miner-1", "validator-1"}, set[str]()
    _wait_exited(supervisor, {"miner-1"})
    assert check_children(supervisor, roles, reported, logs=tmp_path) is None, "one is alive"
    assert reported == {"miner-1"}
    supervisor.stop("validator-1", timeout=10)
    _spawn(supervisor, tmp_path, "validator-1", "raise SystemExit(4)")
    _wait_exited(supervisor, roles)
    error = check_children(supervisor, roles, reported, logs=tmp_path)
    assert error is not None and "every role process exited (miner-1 3, validator-1 4)" in error
    supervisor.stop("devnet", timeout=10)
    _spawn(supervisor, tmp_path, "devnet", "raise SystemExit(1)")
    _wait_exited(supervisor, {"devnet"})
    error = check_children(supervisor, set(), reported, logs=tmp_path)
    assert error is not None and "the devnet ledger exited (code 1)" in error
    supervisor.stop_all(timeout=10)


def _spec(home: Path, **overrides: object) -> NetworkSpec:
    params: dict[str, object] = {
        "home": Home(root=home),
        "miners": 2,
        "round_blocks": 10,
        "block_interval": 0.5,
        "serving": False,
        "backend": False,
        "base_model": "tiny",
        "dataset_chars": 60_000,
    }
    params.update(overrides)
    return NetworkSpec(**params)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_network_rounds_reward_honest_and_slash_cheaters(tmp_path: Path) -> None:
    spec = _spec(tmp_path, cheaters=("random", "copy"))
    snapshots: list[Snapshot] = []
    result = run_network(
        spec,
        UpOptions(chain_port=0, rounds=3, max_rounds=12, poll_s=0.5),
        stop=threading.Event(),
        on_snapshot=snapshots.append,
    )
    assert result.reached, snapshots[-1].line() if snapshots else "no snapshot"
    final = result.snapshot
    assert final is not None
    # the adapter advanced one version per proposing round, each evaluated on held-out text
    versions = [v["version"] for v in final.versions]
    assert versions[:3] == [2, 3, 4] and versions[-1] == final.adapter_version
    assert len({v["round"] for v in final.versions}) == len(versions)
    # On the random 2-layer "tiny" base, 4 steps per task move held-out loss by ~1e-3 either
    # way (two loaded runs had every version 2e-4 to 2e-3 above the base), so this run shows
    # no learning; it checks that no merged update wrecked the model. Learning is asserted
    # where it is deterministic (tests/work/test_work_aggregate.py) and measured on the
    # shipped model over many rounds (benchmarks/up_useful_work.py).
    assert final.base_loss is not None
    for version in final.versions:
        assert abs(version["heldout_loss"] - final.base_loss) < 0.05, version
    miners = {m.name: m for m in final.miners}
    for cheater in ("cheater-1", "cheater-2"):
        assert miners[cheater].rejected >= 1, cheater
        assert miners[cheater].verified == 0 and miners[cheater].earned == 0
    assert miners["cheater-1"].slashed > 0, "the random cheater lost stake"
    for honest in ("miner-1", "miner-2"):
        assert miners[honest].rejected == 0
        earned = [next(m.earned for m in s.miners if m.name == honest) for s in snapshots]
        assert earned[-1] >= 200 and earned == sorted(earned), f"{honest} credits grow"
    # every child stopped cleanly; no pid file is left behind
    assert all(code == 0 for name, code in result.exit_codes.items() if name != "devnet")
    assert [p for p, _ in list_services(spec.home.run)] == []


def _up(home: Path, *args: str, env: dict[str, str] | None = None) -> OutputWatcher:
    argv = ["--base-model", "tiny", "--miners", "1", "--no-serving", "--no-backend", "--headless"]
    argv += ["--chain-port", "0", *args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "r3mes.cli.main", "up", *argv],
        env={**os.environ, "R3MES_HOME": str(home), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return OutputWatcher(proc)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_up_and_down_from_another_shell(tmp_path: Path) -> None:
    env = {**os.environ, "R3MES_HOME": str(tmp_path)}
    up = _up(tmp_path, "--round-blocks", "10", "--block-interval", "0.5")
    try:
        # `up` says so once every role answers /health as ready: pid files written,
        # registered; nothing before that line may be assumed
        up.wait_for("network ready", timeout=300)
        status = subprocess.run(
            [sys.executable, "-m", "r3mes.cli.main", "miner", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "miner-miner-1" in status.stdout, (status.stdout, up.text)
        down = subprocess.run(
            [sys.executable, "-m", "r3mes.cli.main", "down"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert down.returncode == 0, down.stderr
        output = up.finish(120)
        assert up.proc.returncode == 0, output  # a clean stop on request
        assert "chain RPC: http://127.0.0.1:" in output
        assert list(Path(tmp_path / "run").glob("*.pid")) == []
    finally:
        if up.proc.poll() is None:
            up.proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_rounds_with_slow_role_start_up(tmp_path: Path) -> None:
    """Roles that take several rounds to start (here held by the test-only start delay)
    join at the next open round, and `--rounds` counts from the moment all are ready."""
    up = _up(
        tmp_path,
        *("--rounds", "2", "--round-blocks", "8", "--block-interval", "0.5"),
        env={"R3MES_TEST_START_DELAY": "12"},
    )
    try:
        output = up.finish(540)
        assert up.proc.returncode == 0, output  # 2 new adapter versions, within 8 rounds
        ready = output.index("network ready")
        assert "height " not in output[:ready], "nothing is counted before every role is ready"
        assert "rejected 0)" in output[ready:].splitlines()[-2], output
    finally:
        if up.proc.poll() is None:
            up.proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serving_node_hot_swaps_new_adapter_versions(tmp_path: Path) -> None:
    import httpx

    seen: dict[str, object] = {}

    def watch(snapshot: Snapshot) -> None:
        api = snapshot.urls.get("serving API")
        stats_url = snapshot.urls.get("serving-serving-1 stats")
        if not api or not stats_url or not snapshot.versions:
            return
        stats = httpx.get(stats_url, timeout=5).json()
        seen["version"] = stats["adapter_version"]
        seen["swaps"] = stats["hot_swaps"]
        reply = httpx.post(
            f"{api}/chat/completions",
            json={
                "model": "r3mes-adapter",
                "messages": [{"role": "user", "content": "def"}],
                "max_tokens": 4,
            },
            timeout=60,
        )
        seen["status"] = reply.status_code
        seen["body"] = reply.json()

    result = run_network(
        _spec(tmp_path, miners=1, serving=True),
        UpOptions(chain_port=0, rounds=2, max_rounds=10, poll_s=0.5),
        stop=threading.Event(),
        on_snapshot=watch,
    )
    assert result.reached
    assert seen.get("status") == 200, seen
    body = seen["body"]
    assert isinstance(body, dict) and body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(seen["version"], int) and seen["version"] >= 2
    assert isinstance(seen["swaps"], int) and seen["swaps"] >= 1, "picked up without restart"
