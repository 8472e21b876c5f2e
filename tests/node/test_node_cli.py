"""The role commands: help text, clear errors for bad input, down/status with nothing up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


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
    device = _r3mes("validator", "start", "--key", "v", "--device", "gpu 0", home=tmp_path)
    assert device.returncode == 1 and "device must look like 'cpu'" in device.stderr
    assert "nothing is running" in _r3mes("down", home=tmp_path).stdout
    assert "no miner is running" in _r3mes("miner", "status", home=tmp_path).stdout
    stop = _r3mes("proposer", "stop", home=tmp_path)
    assert stop.returncode == 1 and "no running proposer" in stop.stderr


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI in-process as `r3mes ARGV`; (exit code, stderr without line breaks)."""
    from r3mes.cli.main import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["r3mes", *argv])
        with pytest.raises(SystemExit) as info:
            main()
    err = capsys.readouterr().err
    return int(info.value.code or 0), " ".join(err.split())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--rounds", "-2"], "--rounds must be at least 1, got -2"),
        (["--cheat", "bogus"], "--cheat must be one of ('random', 'copy'), got 'bogus'"),
        (["--block-interval", "0"], "--block-interval must be in (0, 600]"),
        (["--block-interval", "-1"], "--block-interval must be in (0, 600]"),
        (["--chain-port", "70000"], "--chain-port must be in [0, 65535], got 70000"),
        (["--ipfs-url", "notaurl"], "--ipfs-url must be an http(s) URL"),
        (["--ipfs-url", "http://h:99999"], "--ipfs-url 'http://h:99999' is not a valid URL"),
        (["--verifiers", "2", "--quorum", "3"], "--quorum must be in [1, --verifiers]"),
    ],
)
def test_up_rejects_bad_flags_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code, err = _main(["up", "--home", str(tmp_path / "h"), *flags], capsys)
    assert code == 1 and message in err
    assert not (tmp_path / "h").exists(), "nothing was prepared or started"


def test_miner_flags_out_of_range_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from r3mes.chain.keystore import Keystore

    Keystore(tmp_path / "keys", scrypt_n=2**14).create("k", passphrase="x")
    base = ["miner", "start", "--key", "k", "--home", str(tmp_path), "--passphrase", "x"]
    for flag, value in [("--retries", "-1"), ("--max-prefetch", "0"), ("--port", "70000")]:
        code, err = _main([*base, flag, value], capsys)
        assert code == 2 and f"Invalid value for '{flag}'" in err, err
    pause = ["--test-pause-after", "TRAINING", "--chain", "http://127.0.0.1:9"]
    code, err = _main([*base, *pause], capsys)
    assert code == 1 and "R3MES_TEST_PAUSE_AFTER must be one of" in err, err
    recompute = ["--gradient-checkpointing", "yes", "--chain", "http://127.0.0.1:9"]
    code, err = _main([*base, *recompute], capsys)
    assert code == 1 and "must be one of auto, on, off" in err, err


def test_miner_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    from r3mes.chain.keystore import Keystore

    Keystore(tmp_path / "keys", scrypt_n=2**14).create("k", passphrase="not-the-passphrase")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = _r3mes(
            "miner", "start", "--key", "k", "--chain", "http://127.0.0.1:9",
            "--port", str(port), home=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"port {port} is in use; pick another --port or 0" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
