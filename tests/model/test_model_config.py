import json

import pytest

from r3mes.model.config import BitNetConfig
from r3mes.model.errors import ConfigError
from r3mes.model.tiny import tiny_config


def test_round_trip_through_hf_json_shape() -> None:
    config = tiny_config(rope_theta=10000.0)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["model_type"] == "bitnet"
    assert data["architectures"] == ["BitNetForCausalLM"]
    assert BitNetConfig.from_dict(data) == config


def test_accepts_hf_bookkeeping_and_rope_parameters() -> None:
    data = tiny_config().to_dict()
    data.pop("rope_theta")
    data["rope_parameters"] = {"rope_type": "default", "rope_theta": 1234.0}
    data["transformers_version"] = "4.99"
    data["eos_token_id"] = [2, 3]
    config = BitNetConfig.from_dict(data)
    assert config.rope_theta == 1234.0
    assert config.eos_token_id == 2


def test_loads_transformers_own_config() -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.BitNetConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = BitNetConfig.from_dict(hf.to_dict())
    assert config.hidden_size == 32 and config.num_key_value_heads == 2
    assert config.rope_theta == 500000.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_sise": 3}, "unknown config key 'hidden_sise'"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"hidden_size": 30}, "not divisible"),
        ({"num_key_value_heads": 3}, "not divisible"),
        ({"vocab_size": -1}, "positive integer"),
        ({"eos_token_id": 9999}, "outside the vocabulary"),
        ({"rope_parameters": {"rope_type": "yarn"}}, "default rotary"),
    ],
)
def test_rejects_malformed(change: dict[str, object], message: str) -> None:
    data = tiny_config().to_dict()
    data.update(change)
    if "rope_parameters" in change:
        data.pop("rope_theta")
    with pytest.raises(ConfigError, match=message):
        BitNetConfig.from_dict(data)


def test_rejects_non_object() -> None:
    with pytest.raises(ConfigError):
        BitNetConfig.from_dict([1, 2])  # type: ignore[arg-type]
