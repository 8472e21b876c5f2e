"""Checkpoints in HF's layout: `config.json` + `model.safetensors`, master or packed.

* master: every BitLinear as a float `weight` (what `BitNetForCausalLM.save_pretrained` writes;
  bf16 or fp32 on load, quantized online);
* packed: the layout of microsoft/bitnet-b1.58-2B-4T - BitLinear `weight` as uint8 with four
  ternary values per byte (transformers' `pack_weights`) plus `weight_scale`
  (`W ~= ternary / weight_scale`), and `quantization_config` in config.json.

Converting packed to master writes `ternary / (weight_scale * nonzero_fraction)`, the one float
tensor whose absmean quantization gives back the same ternary values and the same scale, so
packed -> master -> packed is exact and logits are unchanged.

Loading never unpickles; every problem raises `CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from r3mes.model.bitlinear import BitLinear, pack_ternary, ternarize, unpack_ternary
from r3mes.model.config import BitNetConfig
from r3mes.model.errors import CheckpointError, ConfigError, ModelError
from r3mes.model.modeling import BitNetForCausalLM

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 1024 * 1024
QUANTIZATION_CONFIG = {
    "quant_method": "bitnet",
    "linear_class": "bitlinear",
    "quantization_mode": "offline",
}


def _hf_name(module_path: str) -> str:
    return module_path.replace(".base_layer", "")


def model_state(model: BitNetForCausalLM, *, packed: bool) -> dict[str, torch.Tensor]:
    """The HF-named tensors of `model` (without LoRA), packed or as float masters."""
    state: dict[str, torch.Tensor] = {}
    linear_names = set()
    for path, module in model.bit_linears():
        name = _hf_name(path)
        linear_names.add(name)
        if packed:
            ternary, scale = module.ternary_weight(), module.scale()
            state[f"{name}.weight"] = pack_ternary(ternary)
            state[f"{name}.weight_scale"] = scale.detach().float().reshape(1).clone()
        elif module.weight is not None:
            state[f"{name}.weight"] = module.weight.detach().float().clone()
        else:
            state[f"{name}.weight"] = _master_from_ternary(module)
        if module.bias is not None:
            state[f"{name}.bias"] = module.bias.detach().float().clone()
    for key, tensor in model.state_dict().items():
        key = _hf_name(key)
        owner = key.rsplit(".", 1)[0]
        if owner in linear_names or ".lora_" in key:
            continue
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        state[key] = tensor.detach().float().contiguous().clone()
    return state


def _master_from_ternary(module: BitLinear) -> torch.Tensor:
    ternary, scale = module.ternary_weight(), module.scale()
    nonzero = ternary.abs().mean().clamp(min=1e-12)
    return (ternary / (scale * nonzero)).float().contiguous()


def save_pretrained(model: BitNetForCausalLM, directory: Path | str, *, packed: bool) -> Path:
    """Write config.json and model.safetensors into `directory` (each replaced atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    if packed:
        config["quantization_config"] = dict(QUANTIZATION_CONFIG)
    state = {k: v.contiguous() for k, v in model_state(model, packed=packed).items()}
    weights_tmp = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(weights_tmp), metadata={"format": "pt", "r3mes_packed": str(packed)})
    config_tmp = directory / f".{CONFIG_FILE}.tmp"
    config_tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for tmp in (weights_tmp, config_tmp):
        os.chmod(tmp, 0o644)  # safetensors writes 0600; checkpoints are shared read-only
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    os.replace(config_tmp, directory / CONFIG_FILE)
    logger.info("saved %s checkpoint to %s", "packed" if packed else "master", directory)
    return directory


def load_config(directory: Path) -> BitNetConfig:
    """Read and validate `directory/config.json`."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(path, "missing; a checkpoint folder needs config.json")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(path, f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from exc
    try:
        if isinstance(data, dict):
            _check_quantization(data.get("quantization_config"))
        return BitNetConfig.from_dict(data)
    except ConfigError as exc:
        raise CheckpointError(path, str(exc)) from exc


def _check_quantization(quant: Any) -> None:
    if quant is None:
        return
    if not isinstance(quant, dict) or quant.get("quant_method") != "bitnet":
        raise ConfigError(f"unsupported quantization_config {quant!r}")
    if quant.get("linear_class", "bitlinear") != "bitlinear":
        raise ConfigError("only linear_class 'bitlinear' packed checkpoints are supported")


def _weight_files(directory: Path) -> list[Path]:
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(index, f"malformed shard index ({exc})") from exc
        files = [directory / n for n in names]
        if any(Path(n).name != n for n in names):
            raise CheckpointError(index, "shard names must be plain file names")
    else:
        files = [directory / WEIGHTS_FILE]
    for file in files:
        if not file.is_file():
            raise CheckpointError(file, "missing; the checkpoint has no weights file")
    return files


def read_tensors(directory: Path) -> dict[str, tuple[torch.Tensor, Path]]:
    """Every tensor of the checkpoint's safetensors file(s), with the file it came from."""
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, tuple[torch.Tensor, Path]] = {}
    for file in _weight_files(directory):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    if key in tensors:
                        raise CheckpointError(file, f"tensor {key} appears in two shards")
                    tensors[key] = (handle.get_tensor(key), file)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(file, f"corrupt or truncated safetensors file ({exc})") from exc
    return tensors


def load_pretrained(directory: Path | str) -> BitNetForCausalLM:
    """Load a master or packed checkpoint; a packed one comes back with the backbone frozen."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(directory, "not a folder; pass the checkpoint directory")
    config = load_config(directory)
    tensors = read_tensors(directory)
    model = BitNetForCausalLM(config)
    packed = _install_linears(model, tensors)
    _install_rest(model, tensors)
    leftovers = sorted(
        k for k in tensors if not (config.tie_word_embeddings and k == "lm_head.weight")
    )
    if leftovers:
        file = tensors[leftovers[0]][1]
        raise CheckpointError(file, f"unexpected tensors {leftovers[:4]} (another architecture?)")
    if packed:
        model.freeze_backbone()
    model.eval()
    return model


def _take(
    tensors: dict[str, tuple[torch.Tensor, Path]], key: str, directory_hint: Path
) -> tuple[torch.Tensor, Path]:
    if key not in tensors:
        raise CheckpointError(directory_hint, f"missing tensor {key}")
    return tensors.pop(key)


def _install_linears(
    model: BitNetForCausalLM, tensors: dict[str, tuple[torch.Tensor, Path]]
) -> bool:
    hint = next(iter(tensors.values()))[1] if tensors else Path(".")
    kinds: set[bool] = set()
    for name, module in model.bit_linears():
        weight, file = _take(tensors, f"{name}.weight", hint)
        is_packed = weight.dtype == torch.uint8
        kinds.add(is_packed)
        try:
            if is_packed:
                scale, _ = _take(tensors, f"{name}.weight_scale", file)
                ternary = unpack_ternary(weight, (module.out_features, module.in_features))
                module.load_packed(
                    pack_ternary(ternary), _finite(scale, f"{name}.weight_scale", file)
                )
            else:
                _check_shape(weight, (module.out_features, module.in_features), name, file)
                assert module.weight is not None
                with torch.no_grad():
                    module.weight.copy_(_finite(weight, f"{name}.weight", file))
        except ModelError as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(file, f"{name}.weight: {exc}") from exc
        tensors.pop(f"{name}.weight_scale", None)
        if module.bias is None and f"{name}.bias" in tensors:
            raise CheckpointError(file, f"{name}.bias present but the architecture has no bias")
    if len(kinds) > 1:
        raise CheckpointError(hint, "mixes packed and master BitLinear weights")
    return kinds == {True}


def _install_rest(model: BitNetForCausalLM, tensors: dict[str, tuple[torch.Tensor, Path]]) -> None:
    hint = next(iter(tensors.values()))[1] if tensors else Path(".")
    own = {
        k: v
        for k, v in model.state_dict().items()
        if not (k == "lm_head.weight" and model.config.tie_word_embeddings)
        and not k.endswith(("packed_weight", "weight_scale"))
    }
    linear_weights = {f"{n}.weight" for n, _ in model.bit_linears()}
    with torch.no_grad():
        for key, target in own.items():
            if key in linear_weights:
                continue
            tensor, file = _take(tensors, key, hint)
            _check_shape(tensor, tuple(target.shape), key, file)
            target.copy_(_finite(tensor, key, file))


def _check_shape(tensor: torch.Tensor, shape: tuple[int, ...], key: str, file: Path) -> None:
    if tuple(tensor.shape) != shape:
        raise CheckpointError(
            file, f"tensor {key} has shape {tuple(tensor.shape)}, expected {shape}"
        )
    if not tensor.is_floating_point():
        raise CheckpointError(file, f"tensor {key} has dtype {tensor.dtype}, expected a float type")


def _finite(tensor: torch.Tensor, key: str, file: Path) -> torch.Tensor:
    result = tensor.float()
    if not bool(torch.isfinite(result).all()):
        raise CheckpointError(file, f"tensor {key} holds NaN or infinite values")
    return result


def master_from_packed_is_exact(module: BitLinear) -> bool:
    """True when re-quantizing the written master gives back this module's ternary weights."""
    master = _master_from_ternary(module)
    ternary, _ = ternarize(master)
    return bool(torch.equal(ternary, module.ternary_weight()))
