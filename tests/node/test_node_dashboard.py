"""The `r3mes up` view renders a snapshot, and child processes stop in reverse order."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from r3mes.node.localnet.dashboard import MinerView, RoundView, Snapshot, render
from r3mes.node.runtime.supervisor import ProcessSpec, Supervisor


def test_snapshot_line_and_render() -> None:
    snapshot = Snapshot(
        height=42,
        current_round=5,
        rounds=(RoundView(4, "closed", 3, 2, 1, 3), RoundView(5, "open", 1, 0, 0, 0)),
        miners=(MinerView("miner-1", "remes1x", 1000, 300, 0, 30, 3, 0),),
        versions=({"version": 3, "round": 4, "heldout_loss": 5.01, "base_loss": 5.03},),
        base_loss=5.03,
        urls={"chain RPC": "http://127.0.0.1:1"},
    )
    assert snapshot.proposals == 1
    line = snapshot.line()
    assert "round 5" in line and "verified 2, rejected 1" in line and "v3" in line
    assert "rounds 4-5: submissions 4 " in line  # the counts say which rounds they cover
    console = Console(record=True, width=120)
    console.print(render(snapshot))
    text = console.export_text()
    assert "miner-1" in text and "5.01" in text and "http://127.0.0.1:1" in text


def test_supervisor_stops_children_last_first(tmp_path: Path) -> None:
    marker = tmp_path / "order"
    code = (
        "import pathlib, signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(marker)!r}, 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"pathlib.Path({str(tmp_path)!r}, sys.argv[1] + '.ready').touch()\n"
        "time.sleep(120)\n"
    )
    supervisor = Supervisor()
    for name in ("first", "second"):
        supervisor.spawn(
            ProcessSpec(
                name=name,
                argv=(sys.executable, "-c", code, name),
                log_path=tmp_path / f"{name}.log",
            )
        )
    assert set(supervisor.pids()) == {"first", "second"} and supervisor.exited() == []
    import time

    deadline = time.monotonic() + 60  # both have installed their SIGTERM handlers
    while not all((tmp_path / f"{name}.ready").exists() for name in ("first", "second")):
        assert time.monotonic() < deadline and supervisor.exited() == []
        time.sleep(0.05)
    assert supervisor.stop_all(timeout=60) == {"second": 0, "first": 0}
    assert marker.read_text().split() == ["second", "first"]
