"""Shared fixtures for r3mes.work tests: a byte tokenizer, a small real dataset, a tiny model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from support.tiny import ByteTokenizer

from r3mes.work.data import TokenDataset, build_dataset
from r3mes.work.domain import build_domain_corpus
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.task import HyperParams, Task


@pytest.fixture(scope="session")
def byte_tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="session")
def domain_dataset(tmp_path_factory: pytest.TempPathFactory) -> TokenDataset:
    """~1,300 chunks of 32 byte-tokens from three standard library modules."""
    texts = [t[:15_000] for t in build_domain_corpus()[:3]]
    path = tmp_path_factory.mktemp("work-data") / "domain.r3tok"
    build_dataset(texts, ByteTokenizer(), chunk_len=32, out_path=path)
    return TokenDataset(path)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    from r3mes.model.tiny import make_tiny_model

    return make_tiny_model(0)


BASE_TASK = Task(
    round=3,
    seed=123456789,
    miner="remes1miner0",
    base_model_cid="bafybase",
    adapter_cid="bafyadapter",
    dataset_cid="bafydataset",
    shard_index=0,
    n_shards=4,
    hyper=HyperParams(
        lr="0.01", steps=4, batch_size=4, seq_len=32, rank=4, alpha=8, topk_ppm=100_000
    ),
    executor_class=CPU_DET_V1,
)


@pytest.fixture
def make_task() -> Callable[..., Task]:
    def make(**overrides: Any) -> Task:
        hyper = overrides.pop("hyper", {})
        return dataclasses.replace(
            BASE_TASK, hyper=dataclasses.replace(BASE_TASK.hyper, **hyper), **overrides
        )

    return make


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
