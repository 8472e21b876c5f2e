"""Helpers building transformers' own BitNet models for parity tests (not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

transformers = __import__("transformers")
bitnet_integration = __import__("transformers.integrations.bitnet", fromlist=["AutoBitLinear"])

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hf_config(**overrides: Any) -> Any:
    kwargs: dict[str, Any] = {
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }
    kwargs.update(overrides)
    config = transformers.BitNetConfig(**kwargs)
    config._attn_implementation = "eager"
    return config


def random_hf_model(seed: int, **overrides: Any) -> Any:
    """transformers BitNetForCausalLM with random weights, norms included."""
    torch.manual_seed(seed)
    model = transformers.BitNetForCausalLM(hf_config(**overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    return model.eval()


def quantize_online(model: Any) -> Any:
    """Swap each projection for transformers' AutoBitLinear with online quantization."""
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in TARGETS:
            new = bitnet_integration.AutoBitLinear(
                module.in_features, module.out_features, bias=False, online_quant=True
            )
            new.weight = module.weight
            model.set_submodule(name, new)
    return model


def packed_hf_model(config: Any, state: dict[str, torch.Tensor]) -> Any:
    """transformers' packed-weight BitLinear model loaded strictly from `state`."""
    model = transformers.BitNetForCausalLM(config)
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in TARGETS:
            new = bitnet_integration.BitLinear(
                module.in_features, module.out_features, bias=False, dtype=torch.float32
            )
            model.set_submodule(name, new)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    return model.eval()


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        out: torch.Tensor = model(input_ids=ids).logits.float()
    return out


def save(model: Any, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def from_pretrained(path: Path) -> Any:
    """transformers' own loader (its BitNet quantizer picks the layer class from config.json).

    Cast to float32 afterwards (exact for bf16 values): the quantizer keeps config.json's
    bf16 `torch_dtype` for some tensors, and r3mes computes in float32.
    """
    with torch.compiler.set_stance("force_eager"):
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # PreTrainedModel.float refuses quantized models; the plain module cast is what we want
    return torch.nn.Module.float(model).eval()


def pack_weights(ternary: torch.Tensor) -> torch.Tensor:
    """transformers' own 2-bit packing."""
    packed: torch.Tensor = bitnet_integration.pack_weights(ternary.clone())
    return packed
