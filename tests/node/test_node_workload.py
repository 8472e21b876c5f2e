"""The roles' work (`r3mes.work`: profile, training, verification, adapter versions) over
the node's artifact cache: real storage, a real tiny model and a real dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.tiny import ListedArtifacts

from r3mes.node.artifacts import ArtifactCache
from r3mes.node.errors import ValidationError
from r3mes.storage.blockstore import Blockstore
from r3mes.work.data import shard_of
from r3mes.work.errors import AggregationError, TaskError
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.profile import WorkProfile, derive_task, round_seed
from r3mes.work.submission import build_submission
from r3mes.work.task import Task
from r3mes.work.verify import verify
from r3mes.work.versions import AdapterInfo, merge_updates, package_adapter, random_update


def _task(net: Any, profile: WorkProfile, miner: str, shard: int) -> Task:
    return derive_task(
        round_number=1,
        seed_hex="ab" * 32,
        miner=miner,
        shard=shard,
        n_shards=4,
        base_model_cid=net.model_cid,
        dataset_cid=net.dataset_cid,
        adapter_cid=net.adapter_cid,
        profile=profile,
    )


def test_mine_verify_merge_package(
    tiny_net: Any, tiny_profile: WorkProfile, tmp_path: Path
) -> None:
    source = tiny_net.source()
    cache = ArtifactCache(
        store=Blockstore(tiny_net.store_root), root=tmp_path / "cache", source=source
    )
    model = cache.model(tiny_net.model_cid)
    assert cache.model(tiny_net.model_cid) is model, "models are loaded once"
    dataset = cache.dataset(tiny_net.dataset_cid)
    adapter, config = cache.adapter(tiny_net.adapter_cid)
    assert config.r == 2

    honest = _task(tiny_net, tiny_profile, "remes1alice", 0)
    shard = shard_of(dataset, shard_index=0, n_shards=4)
    mined = build_submission(
        task=honest, model=model, adapter_state=adapter, shard=shard, residual=None
    )
    verdict = verify(
        task=honest,
        submitted=mined.encoded,
        model=model,
        adapter_state=adapter,
        shard=shard,
        residual=None,
        executor_class=CPU_DET_V1,
    )
    assert verdict.accepted and verdict.digest_match

    cheat = random_update(task=honest, adapter_state=adapter, seed=7)
    bad = verify(
        task=honest,
        submitted=cheat.encoded,
        model=model,
        adapter_state=adapter,
        shard=shard,
        residual=None,
        executor_class=CPU_DET_V1,
    )
    assert not bad.accepted

    # copying alice's update under bob's task is caught by the task identity
    bob = _task(tiny_net, tiny_profile, "remes1bob", 1)
    copied = verify(
        task=bob,
        submitted=mined.encoded,
        model=model,
        adapter_state=adapter,
        shard=shard_of(dataset, shard_index=1, n_shards=4),
        residual=None,
        executor_class=CPU_DET_V1,
    )
    assert not copied.accepted

    merged = merge_updates(adapter, [mined.encoded])
    assert set(merged) == set(adapter)
    assert any(not (merged[k] == adapter[k]).all() for k in adapter)
    info = AdapterInfo(2, 1, 1, tiny_net.model_cid, (1,), (mined.digest,))
    bundle = package_adapter(
        merged, lora_r=2, lora_alpha=4, targets=tiny_profile.hyper.target_modules, info=info
    )
    assert bundle == package_adapter(
        merged, lora_r=2, lora_alpha=4, targets=tiny_profile.hyper.target_modules, info=info
    ), "packaging is deterministic"
    store = Blockstore(tiny_net.store_root)
    cid = store.add_bytes(bundle)
    with pytest.raises(ValidationError, match="not an approved artifact"):
        cache.adapter(cid)  # only what the ledger approved is made local
    source.approve(kind="adapter", artifact_id="tiny-adapter", version=2, cid=cid, data=bundle)
    loaded, _ = cache.adapter(cid)
    assert all((loaded[k] == merged[k]).all() for k in merged)


def test_bad_inputs_are_rejected(tiny_net: Any, tiny_profile: WorkProfile, tmp_path: Path) -> None:
    source = tiny_net.source()
    cache = ArtifactCache(
        store=Blockstore(tiny_net.store_root), root=tmp_path / "cache", source=source
    )
    with pytest.raises(ValidationError, match="not the adapter asked for"):
        cache.adapter(tiny_net.dataset_cid)
    data = Blockstore(tiny_net.store_root).get_bytes(tiny_net.dataset_cid)
    listed = ListedArtifacts([])  # approved as an adapter, though it is not a bundle
    listed.approve(
        kind="adapter", artifact_id="odd", version=1, cid=tiny_net.dataset_cid, data=data
    )
    odd = ArtifactCache(store=Blockstore(tiny_net.store_root), root=tmp_path / "odd", source=listed)
    with pytest.raises(ValidationError, match="not usable"):
        odd.adapter(tiny_net.dataset_cid)  # approved, but not a bundle: nothing installed
    assert not (tmp_path / "odd" / "adapters" / "odd" / "1").exists()
    with pytest.raises(ValidationError, match="not a CID"):
        cache.path("../etc/passwd", "dataset")
    with pytest.raises(AggregationError):
        merge_updates({}, [b"garbage"])
    with pytest.raises(TaskError, match="not a lowercase hex"):
        round_seed("XYZ")
    assert round_seed("") == 0


def test_profile_roundtrip(tiny_profile: WorkProfile, tmp_path: Path) -> None:
    path = tmp_path / "work.json"
    tiny_profile.save(path)
    assert WorkProfile.load(path) == tiny_profile
    path.write_text('{"hyper": {"lr": "1e-3"}, "executor_class": "x", "eval_chunks": 1}')
    with pytest.raises(TaskError, match="invalid"):
        WorkProfile.load(path)
    path.write_text("[]")
    with pytest.raises(TaskError, match="keys"):
        WorkProfile.load(path)


def test_models_loaded_for_training_follow_the_gradient_checkpointing_mode(
    tiny_net: Any, tmp_path: Path
) -> None:
    """`--gradient-checkpointing` (miner, validator) reaches the models they train on."""
    store = Blockstore(tiny_net.store_root)
    source = tiny_net.source()
    auto = ArtifactCache(store=store, root=tmp_path / "auto", source=source)
    assert auto.model(tiny_net.model_cid).gradient_checkpointing is False  # tiny: not needed
    on = ArtifactCache(
        store=store, root=tmp_path / "on", source=source, gradient_checkpointing="on"
    )
    assert on.model(tiny_net.model_cid).gradient_checkpointing is True
    with pytest.raises(ValidationError, match="auto, on, off"):
        ArtifactCache(store=store, root=tmp_path / "x", source=source, gradient_checkpointing="1")
