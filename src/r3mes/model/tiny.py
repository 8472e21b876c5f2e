"""Tiny BitNet configs and models for fast tests across the project."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from r3mes.model.config import BitNetConfig
from r3mes.model.modeling import BitNetForCausalLM

_TINY = BitNetConfig(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def tiny_config(**overrides: Any) -> BitNetConfig:
    """A 2-layer, hidden-32, vocab-256 config with GQA; fields can be overridden."""
    return dataclasses.replace(_TINY, **overrides)


def make_tiny_model(seed: int = 0, **overrides: Any) -> BitNetForCausalLM:
    """A randomly initialised tiny model (training mode), deterministic in `seed`."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = BitNetForCausalLM(tiny_config(**overrides))
    model.eval()
    return model
