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


def test_generate_with_a_bfloat16_embedding(folder: Path) -> None:
    args = ["generate", "hello", "--model", str(folder), "--max-new-tokens", "5", "--seed", "1"]
    result = runner.invoke(app, [*args, "--embedding-dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("hello")
    bad = runner.invoke(app, [*args, "--embedding-dtype", "float16"])
    assert bad.exit_code == 2 and "float16" in bad.output


def test_convert_master_and_back(folder: Path, tmp_path: Path) -> None:
    ids = torch.tensor([[1, 4, 9, 16]])
    master = tmp_path / "master"
    assert runner.invoke(app, ["convert", str(folder), str(master), "--master"]).exit_code == 0
    assert (master / "tokenizer.json").is_file()
    config = json.loads((master / "config.json").read_text())
    assert config["quantization_config"]["quantization_mode"] == "online"  # float masters
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


def _adapter(model_folder: Path | None, out: Path, base_name: str) -> Path:
    """A PEFT adapter with non-zero B for the model in `model_folder` (shipped when None)."""
    from r3mes.model.lora import LoraConfig, apply_lora, lora_state_dict
    from r3mes.model.peft_io import save_peft_adapter
    from r3mes.model.shipped import shipped_model_dir

    net = load_pretrained(model_folder or shipped_model_dir())
    config = LoraConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj"))
    apply_lora(net, config, generator=torch.Generator().manual_seed(0))
    state = {k: v + 0.1 if "lora_B" in k else v for k, v in lora_state_dict(net, "default").items()}
    return save_peft_adapter(out, state, config, base_name)


@pytest.mark.parametrize("runtime", ["torch", "torchfree"])
def test_generate_refuses_an_adapter_for_another_base(
    folder: Path, tmp_path: Path, runtime: str
) -> None:
    from r3mes.model.errors import AdapterError
    from r3mes.model.shipped import SHIPPED_MODEL_NAME

    args = ["generate", "hello", "--max-new-tokens", "3", "--device", "cpu", "--runtime", runtime,
            "--adapter"]  # fmt: skip
    mine = _adapter(folder, tmp_path / "mine", "m")  # the fixture folder's recorded name
    result = runner.invoke(app, [*args, str(mine), "--model", str(folder)])
    assert result.exit_code == 0, result.output
    other = _adapter(folder, tmp_path / "other", "someone-elses-model")
    result = runner.invoke(app, [*args, str(other), "--model", str(folder)])
    assert isinstance(result.exception, AdapterError)
    assert "someone-elses-model" in str(result.exception) and result.output == ""
    # without --model the shipped model is the base: its name is what the adapter must record
    result = runner.invoke(app, [*args, str(mine)])
    assert isinstance(result.exception, AdapterError) and "r3mes-bitnet-mini" in str(
        result.exception
    )
    shipped = _adapter(None, tmp_path / "shipped", SHIPPED_MODEL_NAME)
    result = runner.invoke(app, [*args, str(shipped)])
    assert result.exit_code == 0, result.output


def test_generate_checks_the_request_before_printing(folder: Path) -> None:
    from r3mes.model.errors import GenerationError

    result = runner.invoke(
        app, ["generate", "hi", "--model", str(folder), "--max-new-tokens", "5000"]
    )
    assert isinstance(result.exception, GenerationError)
    assert "256 positions" in str(result.exception) and result.output == ""


def test_device_option(folder: Path) -> None:
    from r3mes.model.errors import ModelError

    args = ["generate", "hello", "--model", str(folder), "--max-new-tokens", "2"]
    assert runner.invoke(app, [*args, "--device", "cpu"]).exit_code == 0
    assert runner.invoke(app, [*args, "--device", "auto"]).exit_code == 0
    result = runner.invoke(app, [*args, "--device", "tpu"])
    assert isinstance(result.exception, ModelError) and "choose one of" in str(result.exception)
    assert result.output == ""
    if not torch.cuda.is_available():
        result = runner.invoke(app, [*args, "--device", "cuda"])
        assert isinstance(result.exception, ModelError) and "CUDA" in str(result.exception)


def test_info_shows_detected_device_and_profile(folder: Path) -> None:
    from r3mes.model.device import default_profile, detect_device

    result = runner.invoke(app, ["info", "--model", str(folder)])
    assert result.exit_code == 0, result.output
    profile = default_profile(detect_device())
    assert "detected device" in result.output and detect_device() in result.output
    assert f"{profile.name} (default LoRA rank {profile.lora_rank}" in result.output


def test_destinations_that_are_files_are_refused_up_front(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "a_file"
    target.write_text("keep me")
    result = runner.invoke(app, ["convert", str(folder), str(target)])
    assert isinstance(result.exception, CheckpointError) and "not a folder" in str(result.exception)
    result = runner.invoke(app, ["pretrain", "--out", str(target), "--steps", "1"])
    assert isinstance(result.exception, CheckpointError) and "not a folder" in str(result.exception)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--eval-windows", "-1"], "eval_windows must be >= 0"),
        (["--seq-len", "10000000"], "seq_len must be at most 2048"),
        (["--warmup-steps", "-5"], "warmup_steps must be >= 0"),
        (["--weight-decay", "-0.1"], "weight_decay must be in"),
        (["--num-attention-heads", "5"], "not divisible by num_attention_heads"),
        (["--num-key-value-heads", "3"], "not divisible by num_key_value_heads"),
        (["--vocab-size", "10"], "vocab_size must be in 259..1000000"),
    ],
)
def test_pretrain_refuses_bad_flags_before_any_work(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    from r3mes.model.errors import ModelError

    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "out"), *flags])
    assert isinstance(result.exception, ModelError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "out").exists() and result.output == ""
