"""Bad arguments to the model benchmarks end in argparse's usage error, never a traceback."""

import sys
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import bitlinear, decode, llamacpp_e2e, ternary  # noqa: E402


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        (decode, ["--model", "/nonexistent"], "not a checkpoint folder"),
        (decode, ["--threads", "0"], "--threads must be at least 1"),
        (bitlinear, ["--threads", "0"], "--threads must be at least 1"),
        (bitlinear, ["--threads", "-3"], "--threads must be at least 1"),
        (ternary, ["--threads", "-1"], "--threads must be 0"),
        (ternary, ["--model", "/nonexistent"], "not a checkpoint folder"),
        (llamacpp_e2e, ["--threads", "-1"], "must be 0"),
        (llamacpp_e2e, ["--model", "/nonexistent"], "not a checkpoint folder"),
        (llamacpp_e2e, ["--embedding", "f8"], "invalid choice"),
        (llamacpp_e2e, ["--new-tokens", "1"], "at least 2"),
    ],
)
def test_bad_arguments_are_usage_errors(
    module: ModuleType,
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_decode_reports_a_corrupt_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text("{")
    monkeypatch.setattr(sys, "argv", ["decode.py", "--model", str(tmp_path)])
    with pytest.raises(SystemExit):
        decode.main()
    assert "not valid JSON" in capsys.readouterr().err
