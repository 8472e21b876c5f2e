"""Tiny real fixtures shared by several test packages: a byte tokenizer for the 256-token
tiny model, a small work profile, and a published tiny network (model, dataset, adapter v1
in a blockstore)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r3mes.work.profile import WorkProfile
from r3mes.work.task import HyperParams

TINY_PROFILE = WorkProfile(
    hyper=HyperParams(
        lr="0.01", steps=3, batch_size=2, seq_len=16, rank=2, alpha=4, topk_ppm=200_000
    ),
    eval_chunks=8,
)
"""Training knobs small enough for a test to train, verify and merge in seconds."""


class ByteTokenizer:
    """UTF-8 bytes as token ids; fits the tiny model's 256-token vocabulary."""

    vocab_size = 256
    eos_id = 2

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


@dataclass(frozen=True)
class TinyNet:
    """What `publish_tiny_net` published: the blockstore and the three genesis CIDs."""

    store_root: Path
    model_cid: str
    dataset_cid: str
    adapter_cid: str
    dataset_path: Path


def publish_tiny_net(root: Path, *, profile: WorkProfile = TINY_PROFILE) -> TinyNet:
    """A 2-layer model, a byte-token domain dataset and adapter version 1, published into
    a blockstore under `root` as `r3mes up` publishes its genesis artifacts."""
    from r3mes.model.tiny import make_tiny_model
    from r3mes.node.localnet.bootstrap import (
        build_domain_dataset,
        publish_bytes,
        publish_genesis_adapter,
        publish_model,
    )
    from r3mes.storage.blockstore import Blockstore

    store = Blockstore(root / "blocks")
    model = make_tiny_model(0)
    published_model = publish_model(store, model)
    data_path = build_domain_dataset(
        ByteTokenizer(), out_path=root / "data.r3tok", chunk_len=32, max_chars=40_000
    )
    dataset = publish_bytes(store, data_path.read_bytes())
    adapter = publish_genesis_adapter(
        store, model=model, profile=profile, base_model_cid=published_model.cid
    )
    return TinyNet(root / "blocks", published_model.cid, dataset.cid, adapter.cid, data_path)
