"""The roles' work (`r3mes.work`: profile, training, verification, adapter versions) over
the node's artifact cache: real storage, a real tiny model and a real dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
    cache = ArtifactCache(store=Blockstore(tiny_net.store_root), root=tmp_path / "cache")
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
    loaded, _ = cache.adapter(cid)
    assert all((loaded[k] == merged[k]).all() for k in merged)


def test_bad_inputs_are_rejected(tiny_net: Any, tiny_profile: WorkProfile, tmp_path: Path) -> None:
    cache = ArtifactCache(store=Blockstore(tiny_net.store_root), root=tmp_path / "cache")
    with pytest.raises(ValidationError, match="not a valid bundle"):
        cache.adapter(tiny_net.dataset_cid)
    assert not (tmp_path / "cache" / "bundles" / tiny_net.dataset_cid).exists()
    with pytest.raises(ValidationError, match="not a CID"):
        cache.file("../etc/passwd")
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
