import json
from pathlib import Path

import pytest
import torch

from r3mes.model.checkpoint import load_pretrained
from r3mes.model.pretrain import (
    PretrainConfig,
    pretrain,
    pretrain_command,
    unigram_perplexity,
)
from r3mes.model.tokenizer import load_tokenizer


def test_unigram_perplexity_of_uniform_tokens() -> None:
    train = torch.arange(8).repeat(100)
    windows = torch.arange(8).repeat(2, 1)
    assert unigram_perplexity(train, windows, 8) == pytest.approx(8.0)


def test_command_lists_only_changed_flags() -> None:
    command = pretrain_command(PretrainConfig(steps=5, hidden_size=64), Path("out"))
    assert command == "r3mes model pretrain --out out --hidden-size 64 --steps 5"


@pytest.mark.slow
def test_tiny_pretrain_writes_a_loadable_model_folder(tmp_path: Path) -> None:
    config = PretrainConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        seq_len=32,
        batch_size=4,
        steps=3,
        warmup_steps=1,
        eval_windows=4,
    )
    metrics = pretrain(config, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "SOURCES.md",
    } <= names
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["heldout_perplexity"] == pytest.approx(metrics["heldout_perplexity"])
    assert stored["unigram_perplexity"] > 1 and stored["heldout_tokens_scored"] == 4 * 32
    assert "PSF" in (tmp_path / "SOURCES.md").read_text()
    model, tok = load_pretrained(tmp_path), load_tokenizer(tmp_path)
    assert all(m.frozen for _, m in model.bit_linears())
    assert model.config.vocab_size == tok.vocab_size == 300
