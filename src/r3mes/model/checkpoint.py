"""Checkpoints in HF's layout: `config.json` + `model.safetensors`, master or packed.

* master: every BitLinear as a float `weight` (bf16 or fp32 on load, quantized online), with
  `quantization_config` autobitlinear/online as microsoft/bitnet-b1.58-2B-4T-bf16;
* packed: BitLinear `weight` as uint8 with four ternary values per byte (transformers'
  `pack_weights`) plus `weight_scale`. r3mes writes transformers' `bitlinear` convention
  (`W ~= ternary / weight_scale`) and also reads microsoft/bitnet-b1.58-2B-4T's autobitlinear
  offline one (`W ~= ternary * weight_scale`); see `r3mes.model.quantization`.

Converting packed to master writes `ternary / (weight_scale * nonzero_fraction)`, the one float
tensor whose absmean quantization gives back the same ternary values and the same scale, so
packed -> master -> packed is exact and logits are unchanged.

Loading never unpickles, and checks every tensor's shape and dtype against config.json from
the safetensors headers before any weight memory is allocated; every problem raises
`CheckpointError` naming the file. Saving is byte-deterministic (the weights file is content
addressed by the protocol).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from r3mes.model.bitlinear import (
    VALUES_PER_BYTE,
    BitLinear,
    pack_ternary,
    ternarize,
    unpack_ternary,
)
from r3mes.model.checkpoint_files import CONFIG_FILE, FLOAT_CODES, WEIGHTS_FILE, load_config
from r3mes.model.checkpoint_files import weight_files as _weight_files
from r3mes.model.config import BitNetConfig, tensor_shapes
from r3mes.model.errors import CheckpointError, ModelError
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.quantization import MASTER, PACKED, BitNetQuantization

logger = logging.getLogger(__name__)

# One metadata key only: safetensors writes its metadata map in hash order, so two keys can
# come out in either order from one process to the next and change the file's bytes.
WEIGHTS_METADATA = {"format": "pt"}


def _hf_name(module_path: str) -> str:
    return module_path.replace(".base_layer", "")


def model_state(model: BitNetForCausalLM, *, packed: bool) -> dict[str, torch.Tensor]:
    """The HF-named tensors of `model` (without LoRA) on the CPU, packed or as float masters."""
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
        state[key] = tensor.detach().float().clone()
    return {k: v.cpu().contiguous() for k, v in state.items()}


def _master_from_ternary(module: BitLinear) -> torch.Tensor:
    ternary, scale = module.ternary_weight(), module.scale()
    nonzero = ternary.abs().mean().clamp(min=1e-12)
    return (ternary / (scale * nonzero)).float().contiguous()


def check_destination(directory: Path) -> None:
    """Refuse a destination that exists and is not a folder, before any work is done."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(directory, "exists and is not a folder; choose another destination")


def save_pretrained(model: BitNetForCausalLM, directory: Path | str, *, packed: bool) -> Path:
    """Write config.json and model.safetensors into `directory` (each replaced atomically).

    The same model gives the same bytes in any process (sorted JSON, fixed tensor order, one
    metadata key).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    check_destination(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(directory, f"cannot create the folder ({exc})") from exc
    config = model.config.to_dict()
    config["quantization_config"] = (PACKED if packed else MASTER).to_dict()
    state = model_state(model, packed=packed)
    weights_tmp = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(weights_tmp), metadata=dict(WEIGHTS_METADATA))
    config_tmp = directory / f".{CONFIG_FILE}.tmp"
    config_tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for tmp in (weights_tmp, config_tmp):
        os.chmod(tmp, 0o644)  # safetensors writes 0600; checkpoints are shared read-only
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    os.replace(config_tmp, directory / CONFIG_FILE)
    logger.info("saved %s checkpoint to %s", "packed" if packed else "master", directory)
    return directory


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it (no data read)."""

    shape: tuple[int, ...]
    """Its shape."""
    dtype: str
    """safetensors dtype code: "F32", "BF16", "U8", ..."""
    file: Path
    """The file that holds it."""


def read_header(directory: Path) -> dict[str, TensorInfo]:
    """Shape and dtype of every tensor in the checkpoint's safetensors file(s)."""
    from safetensors import SafetensorError, safe_open

    infos: dict[str, TensorInfo] = {}
    for file in _weight_files(directory):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    if key in infos:
                        raise CheckpointError(file, f"tensor {key} appears in two shards")
                    view = handle.get_slice(key)
                    infos[key] = TensorInfo(tuple(view.get_shape()), view.get_dtype(), file)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(file, f"corrupt or truncated safetensors file ({exc})") from exc
    return infos


class _TensorReader:
    """The checkpoint's tensors, read one at a time on `pop` (safetensors memory-maps the files).

    Two handles per file: packed projection weights come from one whose mapping they keep (they
    are used in place, as llama.cpp uses its mmap: no copy is made at load, and processes that
    load one checkpoint share its pages), everything else from another that `close` releases
    once it has been copied into the model, so the source bytes of the embedding do not stay
    mapped.  A load holds at most one source tensor beside the model.  As with llama.cpp's
    mmap, the file must not be rewritten in place while such a model runs (`save_pretrained`
    writes a new file and renames it, which is safe).
    """

    def __init__(self, directory: Path) -> None:
        from safetensors import SafetensorError, safe_open

        self._files: dict[str, Path] = {}
        self._handles: dict[tuple[Path, bool], Any] = {}
        for file in _weight_files(directory):
            try:
                for kept in (True, False):
                    self._handles[(file, kept)] = safe_open(str(file), framework="pt")
                keys = list(self._handles[(file, True)].keys())
            except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
                raise CheckpointError(
                    file, f"corrupt or truncated safetensors file ({exc})"
                ) from exc
            for key in keys:
                if key in self._files:
                    raise CheckpointError(file, f"tensor {key} appears in two shards")
                self._files[key] = file

    def pop(self, key: str, *, kept: bool = False) -> tuple[torch.Tensor, Path]:
        """Tensor `key` and its file; `kept`: from the handle whose mapping stays alive."""
        from safetensors import SafetensorError

        file = self._files.pop(key)
        try:
            return self._handles[(file, kept)].get_tensor(key), file
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(file, f"corrupt or truncated safetensors file ({exc})") from exc

    def close(self) -> None:
        """Drop the handles (tensors taken with `kept=True` keep their own mapping)."""
        self._handles.clear()


EMBEDDING_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""How `load_pretrained` may hold the embedding and head (`BitNetForCausalLM.hold_embedding`)."""


def load_pretrained(
    directory: Path | str, *, embedding_dtype: str = "float32"
) -> BitNetForCausalLM:
    """Load a master or packed checkpoint; a packed one comes back with the backbone frozen.

    `embedding_dtype` "bfloat16" holds the embedding and head in bfloat16 (a packed checkpoint
    only): read straight into bfloat16, never widened to a float32 copy on the way.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(directory, "not a folder; pass the checkpoint directory")
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ModelError(
            f"embedding dtype {embedding_dtype!r} is not one of {sorted(EMBEDDING_DTYPES)}"
        )
    config, quant = load_config(directory)
    # shapes from the headers only: nothing is allocated before they fit the config
    frozen = _check_layout(config, read_header(directory), quant)
    if embedding_dtype != "float32" and not frozen:
        raise CheckpointError(
            directory,
            f"embedding dtype {embedding_dtype} needs a packed (frozen) checkpoint; this one "
            "holds float master weights for training",
        )
    model = _empty_ternary_model(config) if frozen else BitNetForCausalLM(config)
    if embedding_dtype != "float32":
        _hold_embedding_empty(model, EMBEDDING_DTYPES[embedding_dtype])
    tensors = _TensorReader(directory)
    try:
        _install_linears(model, tensors, quant, frozen=frozen)
        _install_rest(model, tensors)
    finally:
        tensors.close()
    if frozen:
        model.freeze_backbone()
    model.eval()
    _return_freed_heap()
    return model


def _hold_embedding_empty(model: BitNetForCausalLM, dtype: torch.dtype) -> None:
    """Swap the (not yet filled) embedding and head for empty tensors of `dtype`."""
    for module in model.embedding_modules():
        shape = tuple(module.weight.shape)
        module.weight = torch.nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    model.tie_head()


def _return_freed_heap() -> None:
    """Hand the loader's freed heap back to the OS where the C library can (glibc's
    `malloc_trim`): a 2B load otherwise leaves ~100 MB of freed temporaries in the process's
    RSS for its whole life.  Elsewhere (musl, macOS, Windows) nothing to do."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


class _SkippingInit(TorchFunctionMode):
    """Weight initialisers return their tensor untouched (this thread, while active).

    `_empty_ternary_model` builds on the meta device, and every tensor it builds is filled from
    the checkpoint. Initialising meta tensors anyway decomposes `normal_` through `torch._refs`,
    which imports `torch._dynamo` and with it libtriton: 67 MiB of code pages resident for the
    life of every process that loaded a checkpoint (a miner, a validator, a server). A torch
    function mode is thread-local, unlike patching `torch.nn.init`, so a LoRA initialised on
    another thread meanwhile is not touched.
    """

    def __init__(self) -> None:
        super().__init__()
        init = torch.nn.init
        self.skipped = {
            init.normal_, init.uniform_, init.trunc_normal_, init.kaiming_uniform_,
            init.kaiming_normal_, init.xavier_uniform_, init.xavier_normal_,
            torch.Tensor.normal_, torch.Tensor.uniform_,
        }  # fmt: skip

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in self.skipped:
            return args[0] if args else kwargs["tensor"] if kwargs else None
        return func(*args, **(kwargs or {}))


def _empty_ternary_model(config: BitNetConfig) -> BitNetForCausalLM:
    """A model whose BitLinears hold no float master (packed weights come next) and whose other
    tensors are allocated but not initialised (the checkpoint fills them).

    Built on the meta device, so a 2B-parameter checkpoint never allocates the 8 GB of float32
    masters that `BitNetForCausalLM(config)` would initialise and throw away.
    """
    with torch.device("meta"), _SkippingInit():
        model = BitNetForCausalLM(config)
    for _, module in model.bit_linears():
        module.weight = None
    model.to_empty(device="cpu")
    model.tie_head()
    return model


def _check_layout(
    config: BitNetConfig, header: dict[str, TensorInfo], quant: BitNetQuantization | None
) -> bool:
    """Every tensor the model needs is present with its shape and dtype, and nothing else.

    Returns True when the BitLinear weights are stored ternary (packed or offline), False for
    float masters.
    """
    remaining = dict(header)
    hint = next(iter(header.values())).file if header else Path(WEIGHTS_FILE)
    kinds = set()
    for key, shape in tensor_shapes(config).items():
        module = key.removesuffix(".weight")
        if module.rsplit(".", 1)[-1].endswith("_proj"):
            kinds.add(_check_linear(module, shape, remaining, quant, hint))
        else:
            _check_info(_take_info(remaining, key, hint), shape, key)
    if len(kinds) > 1:
        raise CheckpointError(hint, "mixes packed and master BitLinear weights")
    if config.tie_word_embeddings:
        remaining.pop("lm_head.weight", None)  # some tied checkpoints store the head anyway
    if remaining:
        leftovers = sorted(remaining)
        raise CheckpointError(
            remaining[leftovers[0]].file,
            f"unexpected tensors {leftovers[:4]} (another architecture?)",
        )
    return kinds == {True}


def _take_info(remaining: dict[str, TensorInfo], key: str, hint: Path) -> TensorInfo:
    if key not in remaining:
        raise CheckpointError(hint, f"missing tensor {key}")
    return remaining.pop(key)


def _check_info(info: TensorInfo, shape: tuple[int, ...], key: str) -> None:
    if info.shape != shape:
        raise CheckpointError(info.file, f"tensor {key} has shape {info.shape}, expected {shape}")
    if info.dtype not in FLOAT_CODES:
        raise CheckpointError(info.file, f"tensor {key} has dtype {info.dtype}, expected a float")


def _check_linear(
    name: str,
    shape: tuple[int, ...],
    remaining: dict[str, TensorInfo],
    quant: BitNetQuantization | None,
    hint: Path,
) -> bool:
    """Check one projection's tensors (`shape` is (out, in)); True when stored ternary."""
    info = _take_info(remaining, f"{name}.weight", hint)
    scale = remaining.pop(f"{name}.weight_scale", None)
    packed = info.dtype == "U8"
    if packed:
        expected = ((shape[0] + VALUES_PER_BYTE - 1) // VALUES_PER_BYTE, *shape[1:])
        if info.shape != expected:
            raise CheckpointError(
                info.file,
                f"tensor {name}.weight has shape {info.shape}, expected {expected} (packed uint8)",
            )
    else:
        _check_info(info, shape, f"{name}.weight")
    if quant is not None and quant.float_masters and packed:
        raise CheckpointError(
            info.file,
            f"{name}.weight is packed uint8, but quantization_config says float master weights "
            "quantized online (quantization_mode 'online')",
        )
    if quant is not None and quant.linear_class == "bitlinear" and not packed:
        raise CheckpointError(
            info.file,
            f"{name}.weight is {info.dtype}, but linear_class 'bitlinear' stores packed uint8",
        )
    ternary = packed or (quant is not None and quant.scale_multiplies)
    if ternary and scale is None:
        raise CheckpointError(info.file, f"missing tensor {name}.weight_scale")
    if (
        ternary
        and scale is not None
        and (scale.dtype not in FLOAT_CODES or math.prod(scale.shape) != 1)
    ):
        raise CheckpointError(
            scale.file,
            f"tensor {name}.weight_scale must be one float, got {scale.dtype} {scale.shape}",
        )
    if not ternary and scale is not None:
        raise CheckpointError(
            scale.file, f"unexpected tensor {name}.weight_scale next to float master weights"
        )
    if f"{name}.bias" in remaining:
        raise CheckpointError(info.file, f"{name}.bias present but the architecture has no bias")
    return ternary


def _install_linears(
    model: BitNetForCausalLM,
    tensors: _TensorReader,
    quant: BitNetQuantization | None,
    *,
    frozen: bool,
) -> None:
    multiplies = quant is not None and quant.scale_multiplies
    for name, module in model.bit_linears():
        weight, file = tensors.pop(f"{name}.weight", kept=frozen)
        try:
            if frozen:
                scale = _positive_scale(tensors.pop(f"{name}.weight_scale")[0], name, file)
                # r3mes holds the dividing scale (W ~= ternary / scale), as `bitlinear`
                scale = 1.0 / scale if multiplies else scale
                if weight.dtype == torch.uint8:  # the same packing: used in place, no copy
                    module.load_packed(weight, scale, copy=False)  # rejects bad shapes, code 3
                else:
                    ternary = _ternary(weight, module, name, file)
                    module.load_packed(pack_ternary(ternary), scale, copy=False)
            else:
                assert module.weight is not None
                with torch.no_grad():
                    module.weight.copy_(_finite(weight, f"{name}.weight", file))
        except ModelError as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(file, f"{name}.weight: {exc}") from exc


def _positive_scale(scale: torch.Tensor, name: str, file: Path) -> torch.Tensor:
    value = _finite(scale, f"{name}.weight_scale", file).reshape(1)
    if not bool((value > 0).all()):
        raise CheckpointError(file, f"tensor {name}.weight_scale must be positive, got {value}")
    return value


def _ternary(weight: torch.Tensor, module: BitLinear, name: str, file: Path) -> torch.Tensor:
    shape = (module.out_features, module.in_features)
    if weight.dtype == torch.uint8:
        return unpack_ternary(weight, shape)  # rejects the invalid code 3
    values = _finite(weight, f"{name}.weight", file)
    if not bool(((values == -1) | (values == 0) | (values == 1)).all()):
        raise CheckpointError(
            file, f"tensor {name}.weight: offline float weights must hold only -1, 0 and 1"
        )
    return values


def _install_rest(model: BitNetForCausalLM, tensors: _TensorReader) -> None:
    linear_weights = {f"{n}.weight" for n, _ in model.bit_linears()}
    with torch.no_grad():
        for key, target in model.state_dict().items():
            if key in linear_weights or key.endswith(("packed_weight", "weight_scale")):
                continue
            if key == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            tensor, file = tensors.pop(key)
            target.copy_(tensor)  # converts bf16/fp16 in place: no float32 copy of the source
            _check_finite(target, key, file)


FINITE_CHUNK = 1 << 22
"""Elements checked at a time for NaN/inf: a 1.3 GB embedding needs no 330 MB mask."""


def _check_finite(tensor: torch.Tensor, key: str, file: Path) -> None:
    """Raise unless every value is finite, checked chunk by chunk in the tensor's own dtype."""
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), FINITE_CHUNK):
        if not bool(torch.isfinite(flat[start : start + FINITE_CHUNK]).all()):
            raise CheckpointError(file, f"tensor {key} holds NaN or infinite values")


def _finite(tensor: torch.Tensor, key: str, file: Path) -> torch.Tensor:
    """`tensor` as float32 (no copy if it is), once checked by `_check_finite`."""
    _check_finite(tensor, key, file)
    return tensor.float()


def master_from_packed_is_exact(module: BitLinear) -> bool:
    """True when re-quantizing the written master gives back this module's ternary weights."""
    master = _master_from_ternary(module)
    ternary, _ = ternarize(master)
    return bool(torch.equal(ternary, module.ternary_weight()))
