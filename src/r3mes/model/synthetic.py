"""Random-ternary checkpoints of real BitNet shapes, written from a seed without downloads.

`write_random_checkpoint(PRESETS["bitnet-2b4t"], out, seed=0)` writes a packed checkpoint of
microsoft/bitnet-b1.58-2B-4T's shape (2.4 B parameters, about 1.2 GB on disk) in the HF layout
`load_pretrained` reads: every projection as uint8 with four ternary values per byte plus a
`weight_scale`, the embedding in bf16 as the real checkpoint holds it, norms at one.  It never
builds the model: each tensor is drawn straight into its stored form, so writing takes about
the memory of the file.  Same config and seed, same bytes.

The weights are random (each ternary value uniform over {-1, 0, 1}), so the text is noise;
the point is decoding and training cost at the real size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from r3mes.model.bitlinear import VALUES_PER_BYTE
from r3mes.model.checkpoint import WEIGHTS_METADATA, check_destination
from r3mes.model.checkpoint_files import CONFIG_FILE, WEIGHTS_FILE
from r3mes.model.config import BitNetConfig, tensor_shapes
from r3mes.model.errors import CheckpointError, ConfigError
from r3mes.model.quantization import PACKED

PRESETS: dict[str, BitNetConfig] = {
    "bitnet-2b4t": BitNetConfig(
        vocab_size=128256,
        hidden_size=2560,
        intermediate_size=6912,
        num_hidden_layers=30,
        num_attention_heads=20,
        num_key_value_heads=5,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    # the 2B-4T proportions at a size a quick benchmark and the tests can hold
    "bitnet-quick": BitNetConfig(
        vocab_size=32000,
        hidden_size=1280,
        intermediate_size=3456,
        num_hidden_layers=4,
        num_attention_heads=10,
        num_key_value_heads=5,
        max_position_embeddings=4096,
    ),
}
"""Named shapes for `r3mes model init --config NAME`."""

INIT_FILE = "r3mes_init.json"
"""Beside the checkpoint: how it was drawn (generator and seed)."""
EMBED_STD = 0.02
"""Standard deviation of the random embedding (transformers' `initializer_range`)."""
WEIGHT_SCALE = 1.0 / (EMBED_STD * (2.0 / torch.pi) ** 0.5)
"""`weight_scale` of every projection: 1 / absmean of N(0, 0.02) weights, the usual init."""


def preset(name: str) -> BitNetConfig:
    """The config called `name` in `PRESETS`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model config {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def _random_packed(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """Packed (ceil(rows/4), cols) uint8 of uniform ternary values; padding rows hold 0."""
    packed_rows = (rows + VALUES_PER_BYTE - 1) // VALUES_PER_BYTE
    codes = torch.randint(
        0, 3, (VALUES_PER_BYTE * packed_rows, cols), dtype=torch.uint8, generator=gen
    )
    codes[rows:] = 1  # code 1 is the value 0
    blocks = codes.view(VALUES_PER_BYTE, packed_rows, cols)
    return (blocks[0] | (blocks[1] << 2) | (blocks[2] << 4) | (blocks[3] << 6)).contiguous()


def random_state(config: BitNetConfig, *, seed: int) -> dict[str, torch.Tensor]:
    """HF-named tensors of a random packed checkpoint of `config`, drawn in sorted name order."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in sorted(tensor_shapes(config).items()):
        owner = name.removesuffix(".weight")
        if owner.rsplit(".", 1)[-1].endswith("_proj"):
            state[name] = _random_packed(shape[0], shape[1], gen)
            state[f"{owner}.weight_scale"] = torch.tensor([WEIGHT_SCALE], dtype=torch.float32)
        elif len(shape) == 1:
            state[name] = torch.ones(shape, dtype=torch.float32)  # RMSNorm gains
        else:
            weight = torch.empty(shape, dtype=torch.float32).normal_(0.0, EMBED_STD, generator=gen)
            state[name] = weight.to(torch.bfloat16)
    return state


def write_random_checkpoint(config: BitNetConfig, directory: Path | str, *, seed: int) -> Path:
    """Write config.json + model.safetensors of a random packed `config` model into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    check_destination(directory)
    if (directory / WEIGHTS_FILE).exists() or (directory / CONFIG_FILE).exists():
        raise CheckpointError(directory, "already holds a checkpoint; choose an empty folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(directory, f"cannot create the folder ({exc})") from exc
    data = config.to_dict()
    data["quantization_config"] = PACKED.to_dict()
    weights_tmp = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(random_state(config, seed=seed), str(weights_tmp), metadata=dict(WEIGHTS_METADATA))
    config_tmp = directory / f".{CONFIG_FILE}.tmp"
    config_tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for tmp in (weights_tmp, config_tmp):
        os.chmod(tmp, 0o644)
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    os.replace(config_tmp, directory / CONFIG_FILE)
    record = {"generator": "r3mes.model.synthetic (uniform ternary, N(0, 0.02) bf16 embedding)"}
    record["seed"] = str(seed)
    (directory / INIT_FILE).write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    return directory
