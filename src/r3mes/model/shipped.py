"""The small pretrained BitNet that ships inside the package (src/r3mes/assets/base-model/).

Made by `r3mes model pretrain` (see SOURCES.md and metrics.json in that folder): packed
ternary weights, a byte-level BPE tokenizer and the held-out perplexity it reached.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from r3mes.model.errors import CheckpointError
from r3mes.model.tokenizer import Tokenizer, load_tokenizer

if TYPE_CHECKING:  # the torch model: `shipped_model_dir` alone must not import torch
    from r3mes.model.modeling import BitNetForCausalLM

SHIPPED_MODEL_NAME = "r3mes-bitnet-mini"


def shipped_model_dir() -> Path:
    """Folder of the shipped model (config.json, model.safetensors, tokenizer.json, ...)."""
    folder = Path(__file__).resolve().parent.parent / "assets" / "base-model"
    if not (folder / "config.json").is_file():
        raise CheckpointError(folder, "the shipped base model is missing; reinstall r3mes")
    return folder


def load_shipped_model() -> tuple[BitNetForCausalLM, Tokenizer]:
    """The shipped model (backbone frozen, eval mode) and its tokenizer."""
    from r3mes.model.checkpoint import load_pretrained

    folder = shipped_model_dir()
    return load_pretrained(folder), load_tokenizer(folder)
