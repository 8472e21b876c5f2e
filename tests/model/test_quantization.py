"""The microsoft/bitnet-b1.58-2B-4T checkpoint conventions, on tiny checkpoints.

Each folder carries the real 2B-4T config.json keys (sizes shrunk) and is loaded both by
r3mes and by transformers' own `from_pretrained`, whose BitNet quantizer picks
`AutoBitLinear` (online or offline) or `BitLinear` from `quantization_config`.
"""

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
import model.hf_reference as hf  # noqa: E402

from r3mes.model.checkpoint import load_pretrained, save_pretrained  # noqa: E402
from r3mes.model.errors import CheckpointError, ConfigError  # noqa: E402
from r3mes.model.quantization import BitNetQuantization, parse_quantization  # noqa: E402

torch.set_num_threads(1)
IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 100, 127], [1, 8, 8, 8, 64, 3, 4, 5]])
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def real_2b4t_config(mode: str) -> dict[str, Any]:
    """microsoft/bitnet-b1.58-2B-4T(-bf16)'s config.json, every key kept, sizes made tiny."""
    return {
        "architectures": ["BitNetForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_bitnet.BitNetConfig",
            "AutoModelForCausalLM": "modeling_bitnet.BitNetForCausalLM",
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "relu2",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "model_type": "bitnet",
        "rms_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128,
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": mode,
        },
    }


def _bf16_masters(seed: int) -> dict[str, torch.Tensor]:
    """A random transformers BitNet's tensors in bf16, as the -bf16 checkpoint stores them."""
    reference = hf.random_hf_model(seed, tie_word_embeddings=True)
    state = {
        k: v.detach().to(torch.bfloat16).contiguous() for k, v in reference.state_dict().items()
    }
    state.pop("lm_head.weight")  # tied
    return state


def _write(folder: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _offline_state(masters: dict[str, torch.Tensor], *, packed: bool) -> dict[str, torch.Tensor]:
    """The 2B-4T packed layout: ternary weights plus the absmean that *multiplies* them."""
    state = {}
    for key, value in masters.items():
        if key.rsplit(".", 2)[-2] in PROJECTIONS:
            absmean = value.float().abs().mean().clamp(min=1e-5)
            ternary = (value.float() / absmean).round().clamp(-1, 1)
            state[key] = hf.pack_weights(ternary) if packed else ternary.to(torch.bfloat16)
            state[key.replace(".weight", ".weight_scale")] = absmean.reshape(1).bfloat16()
        else:
            state[key] = value
    return state


def test_2b4t_bf16_online_masters_match_transformers(tmp_path: Path) -> None:
    folder = _write(tmp_path / "bf16", _bf16_masters(0), real_2b4t_config("online"))
    ours = load_pretrained(folder)
    assert not any(m.frozen for _, m in ours.bit_linears())  # masters, quantized online
    reference = hf.from_pretrained(folder)
    assert type(reference.model.layers[0].mlp.up_proj).__name__ == "AutoBitLinear"
    assert torch.allclose(ours(IDS), hf.logits(reference, IDS), atol=1e-4)


@pytest.mark.parametrize("packed", [True, False])
def test_2b4t_offline_weights_match_transformers(tmp_path: Path, packed: bool) -> None:
    masters = _bf16_masters(1)
    state = _offline_state(masters, packed=packed)
    folder = _write(tmp_path / "offline", state, real_2b4t_config("offline"))
    ours = load_pretrained(folder)
    assert all(m.frozen for _, m in ours.bit_linears())
    q = dict(ours.bit_linears())["model.layers.0.self_attn.q_proj"]
    absmean = state["model.layers.0.self_attn.q_proj.weight_scale"].float()
    assert torch.allclose(q.scale(), 1.0 / absmean)  # held as the dividing scale
    reference = hf.from_pretrained(folder)
    assert torch.allclose(ours(IDS), hf.logits(reference, IDS), atol=1e-4)
    # the same weights quantized online from the masters give (nearly) the same model:
    # only the bf16 rounding of the stored scale differs
    online = load_pretrained(_write(tmp_path / "bf16", masters, real_2b4t_config("online")))
    assert torch.allclose(ours(IDS), online(IDS), atol=0.05)


def test_2b4t_offline_converts_to_r3mes_packed_exactly(tmp_path: Path) -> None:
    state = _offline_state(_bf16_masters(2), packed=True)
    ours = load_pretrained(_write(tmp_path / "offline", state, real_2b4t_config("offline")))
    save_pretrained(ours, tmp_path / "r3mes", packed=True)
    again = load_pretrained(tmp_path / "r3mes")
    for (_, a), (_, b) in zip(ours.bit_linears(), again.bit_linears(), strict=True):
        assert torch.equal(a.ternary_weight(), b.ternary_weight())
        assert torch.equal(a.scale(), b.scale())
    assert torch.equal(ours(IDS), again(IDS))
    # and transformers reads the re-saved folder (bitlinear class) to the same logits
    reference = hf.from_pretrained(tmp_path / "r3mes")
    assert type(reference.model.layers[0].mlp.up_proj).__name__ == "BitLinear"
    assert torch.allclose(hf.logits(reference, IDS), ours(IDS), atol=1e-4)


def test_2b4t_offline_packed_decodes_without_torch_to_the_same_logits(tmp_path: Path) -> None:
    import numpy as np

    from r3mes.model.torchfree import TorchFreeModel

    state = _offline_state(_bf16_masters(3), packed=True)
    folder = _write(tmp_path / "offline", state, real_2b4t_config("offline"))
    with torch.no_grad():
        want = load_pretrained(folder, embedding_dtype="bfloat16")(IDS[:1])[0, -1].numpy()
    lean = TorchFreeModel.load(folder)  # the scale that multiplies, held as the one dividing
    ids = IDS[0].tolist()
    got = lean.forward(ids, lean.new_cache(len(ids)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_r3mes_master_checkpoints_load_in_transformers_as_online(tmp_path: Path) -> None:
    ours = load_pretrained(_write(tmp_path / "bf16", _bf16_masters(3), real_2b4t_config("online")))
    save_pretrained(ours, tmp_path / "master", packed=False)
    reference = hf.from_pretrained(tmp_path / "master")
    assert type(reference.model.layers[0].mlp.up_proj).__name__ == "AutoBitLinear"
    assert torch.allclose(hf.logits(reference, IDS), ours(IDS), atol=1e-4)


@pytest.mark.parametrize(
    ("mode", "mutate", "message"),
    [
        ("online", lambda s: s.update(_offline_state(dict(s), packed=True)), "packed uint8"),
        ("offline", lambda s: s.pop("model.layers.1.mlp.down_proj.weight_scale"), "weight_scale"),
        (
            "offline",
            lambda s: s.update({"model.layers.0.mlp.up_proj.weight": torch.full((64, 32), 0.5)}),
            "only -1, 0 and 1",
        ),
        (
            "offline",
            lambda s: s.update({"model.layers.0.mlp.up_proj.weight_scale": torch.tensor([-1.0])}),
            "positive",
        ),
        (
            "online",
            lambda s: s.update({"model.layers.0.mlp.up_proj.weight_scale": torch.ones(1)}),
            "unexpected tensor",
        ),
    ],
)
def test_layouts_that_contradict_the_config_are_refused(
    tmp_path: Path,
    mode: str,
    mutate: Any,
    message: str,
) -> None:
    masters = _bf16_masters(4)
    state = _offline_state(masters, packed=False) if mode == "offline" else dict(masters)
    mutate(state)
    folder = _write(tmp_path / "bad", state, real_2b4t_config(mode))
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(folder)


def test_bitlinear_class_requires_packed_weights(tmp_path: Path) -> None:
    config = real_2b4t_config("offline")
    config["quantization_config"]["linear_class"] = "bitlinear"
    folder = _write(tmp_path / "bad", _bf16_masters(5), config)
    with pytest.raises(CheckpointError, match="'bitlinear' stores packed uint8"):
        load_pretrained(folder)


def test_parse_quantization() -> None:
    assert parse_quantization(None) is None
    assert parse_quantization({"quant_method": "bitnet"}) == BitNetQuantization()
    online = parse_quantization(real_2b4t_config("online")["quantization_config"])
    assert online is not None and online.float_masters and not online.scale_multiplies
    offline = parse_quantization(real_2b4t_config("offline")["quantization_config"])
    assert offline is not None and offline.scale_multiplies
    # the keys transformers' BitNetQuantConfig.to_dict adds are accepted at their defaults
    full = {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "online",
        "modules_to_not_convert": None,
        "use_rms_norm": False,
        "rms_norm_eps": 1e-6,
    }
    assert parse_quantization(full) == online
    bad = [
        ({"quant_method": "gptq"}, "quant_method"),
        ({"quant_method": "bitnet", "linear_class": "fancylinear"}, "linear_class"),
        ({"quant_method": "bitnet", "quantization_mode": "sometimes"}, "quantization_mode"),
        ({"quant_method": "bitnet", "group_size": 64}, "unknown quantization_config keys"),
        ({"quant_method": "bitnet", "use_rms_norm": True}, "use_rms_norm"),
        ({"quant_method": "bitnet", "modules_to_not_convert": ["q_proj"]}, "unquantized"),
        ("bitnet", "must be an object"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_quantization(data)


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    config = real_2b4t_config("online")
    config["quantization_config"]["linear_class"] = "fancylinear"
    folder = _write(tmp_path / "bad", _bf16_masters(6), config)
    with pytest.raises(CheckpointError, match=r"config\.json: .*linear_class"):
        load_pretrained(folder)
