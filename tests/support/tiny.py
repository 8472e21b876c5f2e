"""Tiny real fixtures shared by several test packages: a byte tokenizer for the 256-token
tiny model, a small work profile, and a published tiny network (model, dataset, adapter v1
in a blockstore)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class ListedArtifacts:
    """An `ArtifactSource` of approved records held in memory: what a ledger's approved
    list says, for tests that need artifacts but no ledger."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def approved_artifacts(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records if kind is None or r["kind"] == kind]

    def approve(self, *, kind: str, artifact_id: str, version: int, cid: str, data: bytes) -> None:
        """List `data`, stored under `cid`, as approved (ledger-style: integer versions)."""
        record: dict[str, Any] = {
            "id": artifact_id,
            "kind": kind,
            "version": version,
            "cid": cid,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "approved_height": len(self.records) + 1,
        }
        if kind == "adapter":
            record |= {"base_model_id": "tiny", "base_model_version": 1}
        self.records.append(record)


@dataclass(frozen=True)
class TinyNet:
    """What `publish_tiny_net` published: the blockstore, the three genesis CIDs, and the
    approved list that names them."""

    store_root: Path
    model_cid: str
    dataset_cid: str
    adapter_cid: str
    dataset_path: Path
    approved: tuple[dict[str, Any], ...]

    def source(self) -> ListedArtifacts:
        """A fresh approved list (tests may approve more on it)."""
        return ListedArtifacts([dict(r) for r in self.approved])


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
    listed = ListedArtifacts([])
    for kind, artifact_id, cid in (
        ("model", "tiny", published_model.cid),
        ("dataset", "tiny-data", dataset.cid),
        ("adapter", "tiny-adapter", adapter.cid),
    ):
        data = store.get_bytes(cid)
        listed.approve(kind=kind, artifact_id=artifact_id, version=1, cid=cid, data=data)
    return TinyNet(
        root / "blocks",
        published_model.cid,
        dataset.cid,
        adapter.cid,
        data_path,
        tuple(listed.records),
    )
