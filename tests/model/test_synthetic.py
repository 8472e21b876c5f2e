import hashlib
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from r3mes.cli.model import app
from r3mes.model.checkpoint import load_pretrained
from r3mes.model.checkpoint_files import WEIGHTS_FILE
from r3mes.model.config import tensor_shapes
from r3mes.model.errors import CheckpointError, ConfigError
from r3mes.model.synthetic import PRESETS, preset, random_state, write_random_checkpoint
from r3mes.model.tiny import tiny_config


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_2b4t_preset_has_the_real_shape() -> None:
    config = preset("bitnet-2b4t")
    assert (config.hidden_size, config.num_hidden_layers) == (2560, 30)
    assert (config.intermediate_size, config.vocab_size) == (6912, 128256)
    assert config.head_dim == 128 and config.num_key_value_heads == 5
    params = sum(math.prod(s) for s in tensor_shapes(config).values())
    assert 2.40e9 < params < 2.42e9  # 2.08 B ternary + 0.33 B embedding


def test_random_checkpoint_loads_packed_and_runs(tmp_path: Path) -> None:
    config = tiny_config()
    write_random_checkpoint(config, tmp_path / "m", seed=3)
    model = load_pretrained(tmp_path / "m")
    assert all(module.frozen for _, module in model.bit_linears())
    ternary = torch.cat([m.ternary_weight().flatten() for _, m in model.bit_linears()])
    shares = [float((ternary == v).float().mean()) for v in (-1, 0, 1)]
    assert all(0.3 < s < 0.37 for s in shares), shares
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, config.vocab_size) and torch.isfinite(logits).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    config = tiny_config()
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_random_checkpoint(config, tmp_path / name, seed=seed)
    a, b, c = (_digest(tmp_path / n / WEIGHTS_FILE) for n in "abc")
    assert a == b != c


def test_embedding_is_bf16_and_projections_packed() -> None:
    state = random_state(tiny_config(), seed=0)
    assert state["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert state["model.layers.0.mlp.down_proj.weight"].dtype == torch.uint8
    assert state["model.layers.0.mlp.down_proj.weight_scale"].shape == (1,)


def test_refuses_a_folder_with_a_checkpoint_and_unknown_presets(tmp_path: Path) -> None:
    write_random_checkpoint(tiny_config(), tmp_path, seed=0)
    with pytest.raises(CheckpointError, match="already holds"):
        write_random_checkpoint(tiny_config(), tmp_path, seed=0)
    with pytest.raises(ConfigError, match="bitnet-2b4t"):
        preset("bitnet-70b")
    assert set(PRESETS) >= {"bitnet-2b4t", "bitnet-quick"}


@pytest.mark.slow
def test_cli_init_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "quick"
    result = runner.invoke(app, ["init", "--config", "bitnet-quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["info", "--model", str(out)])
    assert info.exit_code == 0, info.output
    assert "3456" in info.output and "32000" in info.output
    bad = runner.invoke(app, ["init", "--config", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0
