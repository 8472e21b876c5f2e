import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from r3mes.model.checkpoint import load_pretrained
from r3mes.model.errors import CheckpointError, ModelError
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
    assert command == "r3mes model pretrain --out out --hidden-size 64 --steps 5 --device cpu"


TINY = PretrainConfig(
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


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("pretrain") / "a"
    return folder, pretrain(TINY, folder)


@pytest.mark.slow
def test_tiny_pretrain_writes_a_loadable_model_folder(
    first_run: tuple[Path, dict[str, Any]],
) -> None:
    tmp_path, metrics = first_run
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


@pytest.mark.slow
def test_pretrain_is_deterministic(first_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Same config, same tensors and same bytes: the shipped model is reproducible."""
    from safetensors.torch import load_file

    first, _ = first_run
    pretrain(TINY, tmp_path / "b")
    a, b = (load_file(folder / "model.safetensors") for folder in (first, tmp_path / "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "SOURCES.md"):
        assert (first / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eval_windows": -1}, "eval_windows must be >= 0"),
        ({"seq_len": 10_000_000}, "seq_len must be at most 2048"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"weight_decay": -0.5}, "weight_decay must be in"),
        ({"weight_decay": float("nan")}, "weight_decay must be in"),
        ({"lr": float("nan")}, "lr must be in"),
        ({"steps": 0}, "steps must be positive"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"vocab_size": 100}, "vocab_size must be in 259..1000000"),
        ({"hidden_size": 30}, "not divisible by num_attention_heads"),
        ({"num_key_value_heads": 3}, "not divisible by num_key_value_heads"),
        ({"intermediate_size": 0}, "intermediate_size must be a positive integer"),
        ({"device": "tpu"}, "device must be cpu, cuda or mps"),
    ],
)
def test_config_refuses_bad_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        dataclasses.replace(TINY, **overrides)


def test_pretrain_refuses_a_file_destination_before_any_work(tmp_path: Path) -> None:
    target = tmp_path / "a_file"
    target.write_text("keep me")
    with pytest.raises(CheckpointError, match="not a folder"):
        pretrain(TINY, target)
    assert target.read_text() == "keep me"
