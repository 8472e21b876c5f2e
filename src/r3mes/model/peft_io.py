"""LoRA adapters on disk in PEFT's format: adapter_config.json + adapter_model.safetensors.

An adapter saved here loads with `peft.PeftModel.from_pretrained` onto transformers'
BitNetForCausalLM, and one saved by PEFT loads here. Only plain LoRA is accepted (no DoRA,
rsLoRA, per-layer rank patterns, biases or extra saved modules): anything else is refused
with an `AdapterError` naming the file, before the model is touched.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r3mes.model.errors import AdapterError
from r3mes.model.lora import (
    PEFT_PREFIX,
    LoraConfig,
    apply_lora,
    load_lora_state_dict,
    remove_adapter,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_WEIGHTS_BYTES = 4 * 1024**3
MAX_CONFIG_DEPTH = 8
"""PEFT configs nest two or three levels (rank_pattern, layer_replication); deeper is hostile."""
MAX_RANK = 4096
MAX_ALPHA = 1e6
# PEFT options that change the maths; each must hold its plain-LoRA value.
_PLAIN_LORA: dict[str, Any] = {
    "use_rslora": False,
    "use_dora": False,
    "bias": "none",
    "fan_in_fan_out": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "rank_pattern": {},
    "alpha_pattern": {},
}


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
        **_PLAIN_LORA,
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


def _read_config(path: Path) -> tuple[LoraConfig, str]:
    if not path.is_file():
        raise AdapterError(f"{path}: missing; an adapter folder needs {ADAPTER_CONFIG}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from exc
    return parse_adapter_config(text, where=str(path))


def parse_adapter_config(text: str, *, where: str) -> tuple[LoraConfig, str]:
    """(LoraConfig, base model name) of a PEFT adapter_config.json's text.

    The text is untrusted (adapters are downloaded): anything but a plain-LoRA config of
    bounded size, depth and finite, in-range numbers is an `AdapterError` naming `where`.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise AdapterError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes")
    data = _load_json(text, where)
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        raise AdapterError(f"{where}: not a PEFT LoRA adapter config (peft_type must be LORA)")
    for key, plain in _PLAIN_LORA.items():
        value = data.get(key, plain)
        if value != plain and not (plain is None and not value):
            raise AdapterError(f"{where}: {key}={_short(value)} is not supported (plain LoRA only)")
    targets = data.get("target_modules")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise AdapterError(f"{where}: target_modules must be a list of module names")
    base = data.get("base_model_name_or_path") or ""
    if not isinstance(base, str):
        raise AdapterError(f"{where}: base_model_name_or_path must be a string")
    rank = data.get("r", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank <= MAX_RANK:
        raise AdapterError(f"{where}: r must be an integer in 1..{MAX_RANK}, not {_short(rank)}")
    alpha = _number(data.get("lora_alpha", 8), "lora_alpha", where, low=0.0, high=MAX_ALPHA)
    if alpha <= 0:
        raise AdapterError(f"{where}: lora_alpha must be positive, not {alpha}")
    dropout = _number(data.get("lora_dropout", 0.0), "lora_dropout", where, low=0.0, high=1.0)
    # LoraConfig takes a float alpha too (PEFT writes 16.0 or 0.5); an integral one is an int
    whole: Any = int(alpha) if float(alpha).is_integer() else alpha
    try:
        config = LoraConfig(
            r=rank,
            alpha=whole,
            target_modules=tuple(targets),
            dropout=float(dropout),
        )
    except (AdapterError, TypeError, ValueError) as exc:
        raise AdapterError(f"{where}: {exc}") from exc
    return config, base


def _load_json(text: str, where: str) -> Any:
    """`json.loads` that refuses NaN / Infinity and nesting deeper than MAX_CONFIG_DEPTH."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        data = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise AdapterError(f"{where}: nests too deeply (at most {MAX_CONFIG_DEPTH})") from None
    except ValueError as exc:
        raise AdapterError(f"{where}: not valid JSON ({exc})") from exc
    level, depth = [data], 0
    while level:  # breadth-first, one list per depth: no recursion on hostile input
        depth += 1
        if depth > MAX_CONFIG_DEPTH:
            raise AdapterError(f"{where}: nests more than {MAX_CONFIG_DEPTH} levels deep")
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return data


def _number(value: object, name: str, where: str, *, low: float, high: float) -> int | float:
    """`value` when it is a finite int or float in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdapterError(f"{where}: {name} must be a number, not {_short(value)}")
    # compared as they are: float() of a 400-digit int raises OverflowError
    finite = isinstance(value, int) or math.isfinite(value)
    if not finite or not low <= value <= high:
        raise AdapterError(f"{where}: {name} must be in [{low:g}, {high:g}], not {_short(value)}")
    return value


def _short(value: object) -> str:
    """repr of a config value for an error message, cut to 80 characters."""
    if isinstance(value, dict | list):
        return f"<JSON {type(value).__name__}>"  # repr would recurse into hostile nesting
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "<huge int>"
    return text if len(text) <= 80 else text[:77] + "..."


def load_peft_adapter(directory: Path | str) -> tuple[dict[str, torch.Tensor], LoraConfig, str]:
    """(state with PEFT keys, LoraConfig, base_model_name) of the adapter in `directory`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config, base = _read_config(directory / ADAPTER_CONFIG)
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{weights}: missing; an adapter folder needs {ADAPTER_WEIGHTS}")
    if weights.stat().st_size > MAX_WEIGHTS_BYTES:
        raise AdapterError(f"{weights}: larger than {MAX_WEIGHTS_BYTES} bytes")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise AdapterError(f"{weights}: corrupt or truncated safetensors file ({exc})") from exc
    _check_state_keys(state, weights)
    for key, tensor in state.items():
        rank_dim = 0 if ".lora_A." in key else 1
        if tensor.shape[rank_dim] != config.r:
            raise AdapterError(
                f"{weights}: {key} has rank {tensor.shape[rank_dim]}, config says {config.r}"
            )
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise AdapterError(f"{weights}: {key} must hold finite floats")
    return {k: v.float() for k, v in state.items()}, config, base


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
