"""Shared fixtures for the serving tests: a trained tiny tokenizer, tiny models, adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from r3mes.model.lora import LoraConfig, apply_lora, lora_state_dict
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.tiny import make_tiny_model
from r3mes.model.tokenizer import Tokenizer, train_bpe_tokenizer
from r3mes.serve.adapters import LoadedAdapter
from r3mes.serve.engine import EngineConfig, ServingEngine

torch.set_num_threads(1)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "def add(a, b): return a + b",
    "hello world, how are you today?",
    "write a python function that sorts a list",
    "the court ruled on the contract dispute",
    "bonjour tout le monde",
] * 20

TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")
MODEL_NAME = "tiny-base"


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return train_bpe_tokenizer(CORPUS, vocab_size=300)


def tiny_model(tokenizer: Tokenizer) -> BitNetForCausalLM:
    model = make_tiny_model(0, vocab_size=tokenizer.vocab_size, max_position_embeddings=512)
    model.freeze_backbone()
    return model


def random_adapter(
    tokenizer: Tokenizer, seed: int, *, rank: int = 4, scale: float = 0.5
) -> LoadedAdapter:
    """A LoRA adapter for `tiny_model` with random A and B, so it visibly changes outputs."""
    config = LoraConfig(r=rank, alpha=2 * rank, target_modules=TARGETS)
    donor = tiny_model(tokenizer)
    apply_lora(donor, config, name="donor")
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(v.shape, generator=gen) * scale
        for k, v in lora_state_dict(donor, "donor").items()
    }
    return LoadedAdapter(state=state, config=config, base_model_name=MODEL_NAME)


AdapterFactory = Callable[[int], LoadedAdapter]


@pytest.fixture
def adapter_factory(tokenizer: Tokenizer) -> AdapterFactory:
    return lambda seed: random_adapter(tokenizer, seed)


def returning(adapter: LoadedAdapter) -> Callable[[], LoadedAdapter]:
    """A loader that hands back an adapter already in memory."""
    return lambda: adapter


def make_engine(tokenizer: Tokenizer, n_adapters: int = 3, **config: Any) -> ServingEngine:
    engine = ServingEngine(
        tiny_model(tokenizer), tokenizer, model_name=MODEL_NAME, config=EngineConfig(**config)
    )
    for i in range(n_adapters):
        adapter = random_adapter(tokenizer, seed=100 + i)
        engine.load_adapter_from(f"ad{i}", returning(adapter), origin=f"seed {100 + i}")
    return engine


EngineFactory = Callable[..., ServingEngine]


@pytest.fixture
def engine_factory(tokenizer: Tokenizer) -> Iterator[EngineFactory]:
    """Builds started engines (tiny model, adapters ad0..adN) and stops them afterwards."""
    made: list[ServingEngine] = []

    def build(n_adapters: int = 3, **config: Any) -> ServingEngine:
        eng = make_engine(tokenizer, n_adapters, **config)
        eng.start()
        made.append(eng)
        return eng

    yield build
    for eng in made:
        eng.stop()


@pytest.fixture
def engine(tokenizer: Tokenizer) -> Iterator[ServingEngine]:
    eng = make_engine(tokenizer, max_loras=4)
    eng.start()
    yield eng
    eng.stop()
