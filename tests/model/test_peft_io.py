import json
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
import model.hf_reference as hf  # noqa: E402

from r3mes.model.checkpoint import load_pretrained  # noqa: E402
from r3mes.model.errors import AdapterError  # noqa: E402
from r3mes.model.lora import (  # noqa: E402
    LoraConfig,
    adapter_names,
    apply_lora,
    load_lora_state_dict,
    lora_state_dict,
)
from r3mes.model.peft_io import (  # noqa: E402
    attach_peft_adapter,
    load_peft_adapter,
    parse_adapter_config,
    save_peft_adapter,
)
from r3mes.model.tiny import make_tiny_model  # noqa: E402

torch.set_num_threads(1)
IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 100, 127]])
CONFIG = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "o_proj", "down_proj"))


def _random_b(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)


def test_our_adapter_loads_into_peft_and_back(tmp_path: Path) -> None:
    reference = hf.random_hf_model(0)
    hf.save(reference, tmp_path / "base")
    ours = load_pretrained(tmp_path / "base")
    ours.freeze_backbone()
    apply_lora(ours, CONFIG, generator=torch.Generator().manual_seed(1))
    _random_b(ours, 2)
    base_name = str(tmp_path / "base")  # a local path, so peft never looks it up online
    save_peft_adapter(tmp_path / "adapter", lora_state_dict(ours, "default"), CONFIG, base_name)
    peft_model = peft.PeftModel.from_pretrained(hf.quantize_online(reference), tmp_path / "adapter")
    assert torch.allclose(hf.logits(peft_model, IDS), ours(IDS), atol=1e-4)
    peft_model.save_pretrained(tmp_path / "from_peft")
    state, config, base = load_peft_adapter(tmp_path / "from_peft")
    assert config == CONFIG and base == base_name
    fresh = load_pretrained(tmp_path / "base")
    attach_peft_adapter(fresh, tmp_path / "from_peft", name="back", expected_base=base_name)
    assert torch.allclose(fresh(IDS), ours(IDS), atol=1e-5)


def test_peft_trained_adapter_loads_here(tmp_path: Path) -> None:
    reference = hf.random_hf_model(3)
    hf.save(reference, tmp_path / "base")
    peft_config = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["k_proj", "up_proj"])
    peft_model = peft.get_peft_model(hf.quantize_online(reference), peft_config)
    _random_b(peft_model, 4)
    peft_model.save_pretrained(tmp_path / "adapter")
    ours = load_pretrained(tmp_path / "base")
    config = attach_peft_adapter(ours, tmp_path / "adapter", name="p")
    assert config.r == 2 and config.alpha == 6
    assert torch.allclose(ours(IDS), hf.logits(peft_model, IDS), atol=1e-4)


def test_adapter_for_another_base_is_refused_and_model_untouched(tmp_path: Path) -> None:
    small = make_tiny_model(0)
    apply_lora(small, CONFIG)
    save_peft_adapter(tmp_path / "a", lora_state_dict(small, "default"), CONFIG, "tiny")
    wide = make_tiny_model(0, hidden_size=64, intermediate_size=128)
    before = wide(IDS)
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        attach_peft_adapter(wide, tmp_path / "a", name="x")
    assert adapter_names(wide) == []
    assert torch.equal(wide(IDS), before)
    with pytest.raises(AdapterError, match="made for base model 'tiny'"):
        attach_peft_adapter(small, tmp_path / "a", name="y", expected_base="r3mes-bitnet-mini")


def test_malformed_adapter_folders(tmp_path: Path) -> None:
    model = make_tiny_model(0)
    apply_lora(model, CONFIG)
    folder = save_peft_adapter(tmp_path / "a", lora_state_dict(model, "default"), CONFIG, "tiny")
    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    good_config, good_weights = config_path.read_text(), weights.read_bytes()
    weights.write_bytes(good_weights[:100])
    with pytest.raises(AdapterError, match="corrupt or truncated"):
        load_peft_adapter(folder)
    weights.write_bytes(good_weights)
    for change, message in [
        ({"use_dora": True}, "use_dora"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"r": 8}, "rank 4, config says 8"),
        ({"target_modules": "q_proj|v_proj"}, "target_modules"),
        ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
    ]:
        data = json.loads(good_config)
        data.update(change)
        config_path.write_text(json.dumps(data))
        with pytest.raises(AdapterError, match=message):
            load_peft_adapter(folder)
    config_path.write_text("[")
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_peft_adapter(folder)


def test_state_round_trip_exact(tmp_path: Path) -> None:
    model = make_tiny_model(0)
    apply_lora(model, CONFIG)
    _random_b(model, 5)
    state = lora_state_dict(model, "default")
    save_peft_adapter(tmp_path, state, CONFIG, "tiny")
    loaded, config, _ = load_peft_adapter(tmp_path)
    assert config == CONFIG
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    other = make_tiny_model(0)
    apply_lora(other, config)
    load_lora_state_dict(other, loaded, "default")
    assert torch.equal(other(IDS), model(IDS))
    with pytest.raises(AdapterError, match="not a PEFT LoRA key"):
        save_peft_adapter(tmp_path / "bad", {"x": torch.zeros(2, 2)}, CONFIG, "tiny")


GOOD_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}


@pytest.mark.parametrize(
    "key, raw, message",
    [
        ("lora_dropout", "1" * 400, "lora_dropout must be in"),  # was OverflowError -> HTTP 500
        ("lora_alpha", "1" * 400, "lora_alpha must be in"),
        ("r", "1" * 400, "r must be an integer"),
        ("lora_alpha", "1e400", "lora_alpha must be in"),  # inf was accepted as alpha
        ("lora_alpha", "NaN", "NaN is not a JSON number"),  # nan was accepted as alpha
        ("lora_dropout", "-Infinity", "Infinity is not a JSON number"),
        ("lora_alpha", '"8"', "lora_alpha must be a number"),
        ("bias", "[" * 5000 + "]" * 5000, "nests too deeply"),  # was RecursionError
        ("bias", "[" * 200 + "]" * 200, "nests more than 8 levels"),
    ],
)
def test_hostile_numbers_and_nesting_are_adapter_errors(
    tmp_path: Path, key: str, raw: str, message: str
) -> None:
    """Issue 19 item 12: a 400-digit lora_dropout escaped as OverflowError (HTTP 500)."""
    text = json.dumps(GOOD_CONFIG)[:-1] + f', "{key}": {raw}}}'
    with pytest.raises(AdapterError, match=message):
        parse_adapter_config(text, where="adapter_config.json")
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(text)
    with pytest.raises(AdapterError, match=message):
        load_peft_adapter(folder)


def test_float_alpha_and_dropout_within_range_parse() -> None:
    text = json.dumps({**GOOD_CONFIG, "lora_alpha": 16.0, "lora_dropout": 0.05})
    config, base = parse_adapter_config(text, where="x")
    assert config.alpha == 16 and isinstance(config.alpha, int) and config.dropout == 0.05
    assert base == ""
    config, _ = parse_adapter_config(json.dumps({**GOOD_CONFIG, "lora_alpha": 0.5}), where="x")
    assert config.alpha == 0.5
