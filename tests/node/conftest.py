"""Shared fixtures for r3mes.node tests: a byte tokenizer and a tiny published network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from r3mes.work.profile import WorkProfile
from r3mes.work.task import HyperParams

TINY_PROFILE = WorkProfile(
    hyper=HyperParams(
        lr="0.01", steps=3, batch_size=2, seq_len=16, rank=2, alpha=4, topk_ppm=200_000
    ),
    eval_chunks=8,
)


class ByteTokenizer:
    """UTF-8 bytes as token ids; fits the tiny model's 256-token vocabulary."""

    vocab_size = 256
    eos_id = 2

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


@dataclass(frozen=True)
class TinyNet:
    store_root: Path
    model_cid: str
    dataset_cid: str
    adapter_cid: str
    dataset_path: Path


@pytest.fixture(scope="session")
def tiny_profile() -> WorkProfile:
    return TINY_PROFILE


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_net(tmp_path_factory: pytest.TempPathFactory) -> TinyNet:
    from r3mes.model.tiny import make_tiny_model
    from r3mes.node.localnet.bootstrap import (
        build_domain_dataset,
        publish_bytes,
        publish_genesis_adapter,
        publish_model,
    )
    from r3mes.storage.blockstore import Blockstore

    root = tmp_path_factory.mktemp("tinynet")
    store = Blockstore(root / "blocks")
    model = make_tiny_model(0)
    published_model = publish_model(store, model)
    data_path = build_domain_dataset(
        ByteTokenizer(), out_path=root / "data.r3tok", chunk_len=32, max_chars=40_000
    )
    dataset = publish_bytes(store, data_path.read_bytes())
    adapter = publish_genesis_adapter(
        store, model=model, profile=TINY_PROFILE, base_model_cid=published_model.cid
    )
    return TinyNet(root / "blocks", published_model.cid, dataset.cid, adapter.cid, data_path)
