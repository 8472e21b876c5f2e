"""Put a network's first artifacts into storage: base model, dataset, genesis adapter.

`r3mes up` calls these before it writes the genesis file, so the chain starts with the
three approved artifacts every round needs. Each returns a `Published` (CID, SHA-256,
size) - what an `ArtifactSpec` records.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from r3mes.node.artifacts import BlobStore
from r3mes.work.profile import WorkProfile
from r3mes.work.versions import GENESIS_ADAPTER_SEED, AdapterInfo, package_adapter

if TYPE_CHECKING:
    from r3mes.model.modeling import BitNetForCausalLM
    from r3mes.work.data import TextTokenizer


@dataclass(frozen=True)
class Published:
    """An artifact in storage."""

    cid: str
    sha256: str
    size: int


def publish_bytes(store: BlobStore, data: bytes) -> Published:
    cid = store.add_bytes(data, pin=True)
    return Published(cid=cid, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def publish_model_dir(store: BlobStore, directory: Path) -> Published:
    """Bundle a model folder (config.json, model.safetensors, tokenizer.json) and store it."""
    from r3mes.registry.bundle import pack_dir

    return publish_bytes(store, pack_dir(directory))


def publish_model(store: BlobStore, model: BitNetForCausalLM) -> Published:
    """Save `model` in HF layout (master weights), bundle and store it."""
    from r3mes.model.checkpoint import save_pretrained

    folder = Path(tempfile.mkdtemp(prefix="r3mes-model-"))
    try:
        save_pretrained(model, folder, packed=False)
        return publish_model_dir(store, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_domain_dataset(
    tokenizer: TextTokenizer, *, out_path: Path, chunk_len: int, max_chars: int
) -> Path:
    """The shipped domain corpus (Python standard library sources) as a token dataset."""
    from r3mes.work.data import build_dataset
    from r3mes.work.domain import build_domain_corpus

    texts: list[str] = []
    budget = max_chars
    for text in build_domain_corpus():
        if budget <= 0:
            break
        texts.append(text[:budget])
        budget -= len(texts[-1])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return build_dataset(texts, tokenizer, chunk_len=chunk_len, out_path=out_path)


def publish_genesis_adapter(
    store: BlobStore, *, model: BitNetForCausalLM, profile: WorkProfile, base_model_cid: str
) -> Published:
    """Adapter version 1: LoRA A Kaiming-initialised from a fixed seed, B zero."""
    import torch

    from r3mes.model.lora import LoraConfig, apply_lora, lora_state_dict, remove_adapter

    h = profile.hyper
    config = LoraConfig(r=h.rank, alpha=h.alpha, target_modules=h.target_modules)
    name = "r3mes-genesis"
    apply_lora(
        model, config, name=name, generator=torch.Generator().manual_seed(GENESIS_ADAPTER_SEED)
    )
    try:
        state = lora_state_dict(model, name)
    finally:
        remove_adapter(model, name)
    info = AdapterInfo(
        version=1,
        parent_version=0,
        round=0,
        base_model_cid=base_model_cid,
        submission_ids=(),
        update_digests=(),
    )
    data = package_adapter(
        state, lora_r=h.rank, lora_alpha=h.alpha, targets=h.target_modules, info=info
    )
    return publish_bytes(store, data)
