"""The CLI config file: TOML defaults per command, below flags and env vars, typos rejected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r3mes.cli.config import ConfigError
from r3mes.cli.main import app

runner = CliRunner()
CIDV0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
CIDV1 = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello world\n")
    return f


def test_config_file_sets_option_defaults(tmp_path: Path, hello: Path) -> None:
    cfg = tmp_path / "r3mes.toml"
    cfg.write_text("[storage.cid]\ncid-version = 0\n")
    out = runner.invoke(app, ["--config", str(cfg), "storage", "cid", str(hello)])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == CIDV0
    # a flag wins over the file
    out = runner.invoke(
        app, ["--config", str(cfg), "storage", "cid", str(hello), "--cid-version", "1"]
    )
    assert out.output.strip() == CIDV1


def test_home_config_and_env_var(tmp_path: Path, hello: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[storage.cid]\ncid_version = 0\n")
    out = runner.invoke(app, ["storage", "cid", str(hello)], env={"R3MES_HOME": str(home)})
    assert out.output.strip() == CIDV0
    other = tmp_path / "other.toml"
    other.write_text("[storage.cid]\ncid-version = 1\n")
    out = runner.invoke(
        app,
        ["storage", "cid", str(hello)],
        env={"R3MES_HOME": str(home), "R3MES_CONFIG": str(other)},
    )
    assert out.output.strip() == CIDV1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[storage.cdi]\ncid-version = 0\n", "unknown command or option 'storage cdi'"),
        ("[up]\nminers = 3\nminer = 2\n", "unknown command or option 'up miner'"),
        ("[up]\nminers = { a = 1 }\n", "takes a value, not a table"),
        ("up = 3\n", "must be a table"),
        ("[up\n", "not valid TOML"),
    ],
)
def test_bad_config_is_rejected(tmp_path: Path, hello: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = runner.invoke(app, ["--config", str(cfg), "storage", "cid", str(hello)])
    assert out.exit_code != 0
    assert isinstance(out.exception, ConfigError) and message in str(out.exception)


def test_bad_config_is_one_clear_line(tmp_path: Path, hello: Path) -> None:
    missing = tmp_path / "missing.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "r3mes.cli.main", "--config", str(missing), "version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot read config file" in proc.stderr and "Traceback" not in proc.stderr


def test_os_errors_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    from r3mes.cli import main as cli_main

    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/blocks/x")

    monkeypatch.setattr(cli_main, "app", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "No space left on device (/data/blocks/x)" in err and "Traceback" not in err


def test_error_text_with_brackets_is_not_eaten_as_markup(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[up]\n[up.x]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "r3mes.cli.main", "--config", str(cfg), "version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "'up x'" in proc.stderr
