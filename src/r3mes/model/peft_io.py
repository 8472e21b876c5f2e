"""LoRA adapters on disk in PEFT's format: adapter_config.json + adapter_model.safetensors.

An adapter saved here loads with `peft.PeftModel.from_pretrained` onto transformers'
BitNetForCausalLM, and one saved by PEFT loads here. Only plain LoRA is accepted (no DoRA,
rsLoRA, per-layer rank patterns, biases or extra saved modules): anything else is refused
with an `AdapterError` naming the file, before the model is touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from r3mes.model.errors import AdapterError
from r3mes.model.lora import apply_lora, load_lora_state_dict, remove_adapter
from r3mes.model.lora_config import PEFT_PREFIX, LoraConfig
from r3mes.model.peft_config import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PLAIN_LORA,
    load_adapter_arrays,
)
from r3mes.model.peft_config import parse_adapter_config as parse_adapter_config


def save_peft_adapter(
    directory: Path | str,
    state: dict[str, torch.Tensor],
    config: LoraConfig,
    base_model_name: str,
) -> Path:
    """Write `state` (PEFT keys, from `lora_state_dict`) and its config into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    _check_state_keys(state, directory / ADAPTER_WEIGHTS)
    directory.mkdir(parents=True, exist_ok=True)
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(config.target_modules),
        "inference_mode": True,
        "init_lora_weights": True,
        "revision": None,
        "layers_pattern": None,
        **PLAIN_LORA,
    }
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    weights_tmp = directory / f".{ADAPTER_WEIGHTS}.tmp"
    save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    config_tmp = directory / f".{ADAPTER_CONFIG}.tmp"
    config_tmp.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    for tmp in (weights_tmp, config_tmp):
        os.chmod(tmp, 0o644)  # safetensors writes 0600; checkpoints are shared read-only
    os.replace(weights_tmp, directory / ADAPTER_WEIGHTS)
    os.replace(config_tmp, directory / ADAPTER_CONFIG)
    return directory


def _check_state_keys(state: dict[str, torch.Tensor], where: Path) -> None:
    if not state:
        raise AdapterError(f"{where}: adapter holds no tensors")
    for key, tensor in state.items():
        if not key.startswith(PEFT_PREFIX) or not key.endswith(
            (".lora_A.weight", ".lora_B.weight")
        ):
            raise AdapterError(f"{where}: tensor {key!r} is not a PEFT LoRA key")
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
            raise AdapterError(f"{where}: tensor {key!r} must be a 2-D tensor")


def load_peft_adapter(directory: Path | str) -> tuple[dict[str, torch.Tensor], LoraConfig, str]:
    """(state with PEFT keys, LoraConfig, base_model_name) of the adapter in `directory`.

    Read and checked by `peft_config.load_adapter_arrays` (float32 copies, so the tensors
    share their memory and own it).
    """
    arrays, config, base = load_adapter_arrays(directory)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, config, base


def attach_peft_adapter(
    model: nn.Module,
    directory: Path | str,
    *,
    name: str,
    expected_base: str | None = None,
) -> LoraConfig:
    """Load the adapter in `directory` into `model` as `name`; on any error the model is unchanged.

    `expected_base` (e.g. `SHIPPED_MODEL_NAME`) must equal the adapter's recorded base model.
    """
    state, config, base = load_peft_adapter(directory)
    if expected_base is not None and base != expected_base:
        raise AdapterError(
            f"{Path(directory) / ADAPTER_CONFIG}: adapter was made for base model {base!r}, "
            f"not {expected_base!r}"
        )
    apply_lora(model, config, name=name)
    try:
        load_lora_state_dict(model, state, name)
    except AdapterError as exc:
        remove_adapter(model, name)
        raise AdapterError(f"{Path(directory) / ADAPTER_WEIGHTS}: {exc}") from exc
    return config
