"""Bad arguments to the model benchmarks end in argparse's usage error, never a traceback."""

import sys
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import bitlinear, decode, llamacpp_e2e, ternary, torchfree  # noqa: E402


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        (decode, ["--model", "/nonexistent"], "not a checkpoint folder"),
        (decode, ["--threads", "0"], "--threads must be at least 1"),
        (bitlinear, ["--threads", "0"], "--threads must be at least 1"),
        (bitlinear, ["--threads", "-3"], "--threads must be at least 1"),
        (ternary, ["--threads", "-1"], "--threads must be 0"),
        (ternary, ["--model", "/nonexistent"], "not a checkpoint folder"),
        (torchfree, ["--threads", "-1"], "--threads must be 0"),
        (torchfree, ["--model", "/nonexistent"], "not a checkpoint folder"),
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


def test_torchfree_reports_a_corrupt_checkpoint(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "config.json").write_text("{")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.torchfree", "--model", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "not valid JSON" in done.stderr and "Traceback" not in done.stderr


def test_torchfree_measures_a_decode_in_a_process_without_torch(tmp_path: Path) -> None:
    from r3mes.model.checkpoint import save_pretrained
    from r3mes.model.tiny import make_tiny_model

    model = make_tiny_model(0)
    model.freeze_backbone()
    folder = save_pretrained(model, tmp_path / "m", packed=True)
    with pytest.raises(SystemExit, match="without torch"):
        torchfree.measure(folder, 1, True)  # this process has imported torch
    result = torchfree.measure_in_child(folder, 1, True)
    assert result["tokens_per_s"] > 0 and result["threads"] == 1
    assert result["peak_rss"] > result["held"] > 0
    assert result["kv"] == 2 * 2 * 2 * 8 * (torchfree.PROMPT + 16) * 4
    line = torchfree.budget_figures(result)
    budget = result["held"] + result["kv"] + torchfree.RSS_SLACK
    assert line["ratio"] == round(result["peak_rss"] / budget, 3)
    assert line["baseline"] == round(budget / 2**20)
