"""A PEFT LoRA adapter folder read without torch: adapter_config.json and the weights as numpy.

`peft_io` loads adapters into the torch model; `torchfree` applies them with numpy.  The
files are untrusted (adapters are downloaded): sizes are bounded, the config must be plain
LoRA, and the weights must be PEFT LoRA keys of finite floats at the config's rank.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from r3mes.model.checkpoint_files import FLOAT_CODES, bf16_to_float32, map_safetensors
from r3mes.model.errors import AdapterError, CheckpointError
from r3mes.model.lora_config import PEFT_PREFIX, LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_WEIGHTS_BYTES = 4 * 1024**3
MAX_CONFIG_DEPTH = 8
"""PEFT configs nest two or three levels (rank_pattern, layer_replication); deeper is hostile."""
MAX_RANK = 4096
MAX_ALPHA = 1e6
# PEFT options that change the maths; each must hold its plain-LoRA value.
PLAIN_LORA: dict[str, Any] = {
    "use_rslora": False,
    "use_dora": False,
    "bias": "none",
    "fan_in_fan_out": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "rank_pattern": {},
    "alpha_pattern": {},
}


def read_adapter_config(path: Path) -> tuple[LoraConfig, str]:
    """(LoraConfig, base model name) of the adapter_config.json at `path` (bounded size)."""
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
    for key, plain in PLAIN_LORA.items():
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


def load_adapter_arrays(directory: Path | str) -> tuple[dict[str, np.ndarray], LoraConfig, str]:
    """(PEFT key -> float32 array, LoraConfig, base model name) of the adapter in `directory`.

    The same checks as `peft_io.load_peft_adapter`, without torch: bounded files, plain-LoRA
    config, PEFT LoRA keys only, 2-D finite floats whose rank dimension is the config's `r`.
    """
    directory = Path(directory)
    config, base = read_adapter_config(directory / ADAPTER_CONFIG)
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{weights}: missing; an adapter folder needs {ADAPTER_WEIGHTS}")
    if weights.stat().st_size > MAX_WEIGHTS_BYTES:
        raise AdapterError(f"{weights}: larger than {MAX_WEIGHTS_BYTES} bytes")
    try:
        mapped = map_safetensors(weights)
    except CheckpointError as exc:
        raise AdapterError(f"{weights}: corrupt or truncated safetensors file ({exc})") from exc
    if not mapped:
        raise AdapterError(f"{weights}: adapter holds no tensors")
    state: dict[str, np.ndarray] = {}
    for key, (code, array) in mapped.items():
        if not key.startswith(PEFT_PREFIX) or not key.endswith(
            (".lora_A.weight", ".lora_B.weight")
        ):
            raise AdapterError(f"{weights}: tensor {key!r} is not a PEFT LoRA key")
        if array.ndim != 2:
            raise AdapterError(f"{weights}: tensor {key!r} must be a 2-D tensor")
        if code not in FLOAT_CODES:
            raise AdapterError(f"{weights}: {key} must hold finite floats")
        values = bf16_to_float32(array) if code == "BF16" else array.astype(np.float32)
        rank_dim = 0 if ".lora_A." in key else 1
        if values.shape[rank_dim] != config.r:
            raise AdapterError(
                f"{weights}: {key} has rank {values.shape[rank_dim]}, config says {config.r}"
            )
        if not np.isfinite(values).all():
            raise AdapterError(f"{weights}: {key} must hold finite floats")
        state[key] = np.ascontiguousarray(values)
    return state, config, base
