import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from r3mes.cli.model import app
from r3mes.model.checkpoint import load_pretrained, save_pretrained
from r3mes.model.errors import CheckpointError
from r3mes.model.tiny import make_tiny_model
from r3mes.model.tokenizer import train_bpe_tokenizer

runner = CliRunner()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    tok = train_bpe_tokenizer(["hello world, hello model. " * 5] * 5, 300)
    model = make_tiny_model(0, vocab_size=300)
    save_pretrained(model, tmp_path / "m", packed=True)
    tok.save(tmp_path / "m")
    return tmp_path / "m"


def test_info_reports_packed_size(folder: Path) -> None:
    result = runner.invoke(app, ["info", "--model", str(folder)])
    assert result.exit_code == 0, result.output
    assert "ternary parameters" in result.output and "B/param" in result.output


def test_generate_streams_text(folder: Path) -> None:
    result = runner.invoke(
        app, ["generate", "hello", "--model", str(folder), "--max-new-tokens", "5", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("hello")


def test_convert_master_and_back(folder: Path, tmp_path: Path) -> None:
    ids = torch.tensor([[1, 4, 9, 16]])
    master = tmp_path / "master"
    assert runner.invoke(app, ["convert", str(folder), str(master), "--master"]).exit_code == 0
    assert (master / "tokenizer.json").is_file()
    config = json.loads((master / "config.json").read_text())
    assert "quantization_config" not in config
    back = tmp_path / "back"
    assert runner.invoke(app, ["convert", str(master), str(back), "--packed"]).exit_code == 0
    a, b = load_pretrained(folder), load_pretrained(back)
    assert all(
        torch.equal(x.ternary_weight(), y.ternary_weight())
        for (_, x), (_, y) in zip(a.bit_linears(), b.bit_linears(), strict=True)
    )
    assert torch.allclose(a(ids), b(ids), atol=1e-2)


def test_convert_refuses_same_folder(folder: Path) -> None:
    result = runner.invoke(app, ["convert", str(folder), str(folder)])
    assert isinstance(result.exception, CheckpointError)
