"""The role commands: help text, clear errors for bad input, down/status with nothing up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _r3mes(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "R3MES_HOME": str(home), "R3MES_PASSPHRASE": "not-the-passphrase"}
    return subprocess.run(
        [sys.executable, "-m", "r3mes.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_role_commands(tmp_path: Path) -> None:
    for command in ("up", "down", "miner", "validator", "proposer", "serving-node"):
        result = _r3mes(command, "--help", home=tmp_path)
        assert result.returncode == 0 and "Usage" in result.stdout, command
    missing = _r3mes(
        "miner", "start", "--key", "nobody", "--chain", "http://127.0.0.1:9", home=tmp_path
    )
    assert missing.returncode == 1 and "cannot load key 'nobody'" in missing.stderr
    assert not list((tmp_path / "run").glob("*.pid")) if (tmp_path / "run").exists() else True
    bad = _r3mes("up", "--miners", "0", home=tmp_path)
    assert bad.returncode == 1 and "--miners must be in" in bad.stderr
    url = _r3mes("validator", "start", "--key", "v", "--chain", "ftp://x", home=tmp_path)
    assert url.returncode == 1
    assert "nothing is running" in _r3mes("down", home=tmp_path).stdout
    assert "no miner is running" in _r3mes("miner", "status", home=tmp_path).stdout
    stop = _r3mes("proposer", "stop", home=tmp_path)
    assert stop.returncode == 1 and "no running proposer" in stop.stderr
