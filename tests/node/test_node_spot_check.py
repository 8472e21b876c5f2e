"""The validator's spot-check policy: rate, readiness, trace fetch, and the verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.tiny import ByteTokenizer

from r3mes.model.tiny import make_tiny_model
from r3mes.node.errors import ValidationError
from r3mes.node.spot_check import PPM, TraceRef, fetch_trace, judge, ready, spot_rate
from r3mes.storage.blockstore import Blockstore
from r3mes.work.data import Shard, TokenDataset, build_dataset, shard_of
from r3mes.work.domain import build_domain_corpus
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.task import HyperParams, Task
from r3mes.work.trace import build_traced_submission, encode_trace
from r3mes.work.verify import Verdict
from r3mes.work.versions import random_update

TASK = Task(
    round=4,
    seed=99,
    miner="remes1miner0",
    base_model_cid="bafybase",
    adapter_cid="genesis",
    dataset_cid="bafydata",
    shard_index=1,
    n_shards=4,
    hyper=HyperParams(lr="0.01", steps=6, batch_size=2, seq_len=32, rank=4, alpha=8),
    executor_class=CPU_DET_V1,
)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Shard:
    texts = [t[:8_000] for t in build_domain_corpus()[:2]]
    path = tmp_path_factory.mktemp("spot") / "d.r3tok"
    build_dataset(texts, ByteTokenizer(), chunk_len=32, out_path=path)
    return shard_of(TokenDataset(path), shard_index=1, n_shards=4)


def test_rate_comes_from_the_override_then_genesis_then_full() -> None:
    assert spot_rate(genesis_ppm=100_000, override=None) == 100_000
    assert spot_rate(genesis_ppm=100_000, override=PPM) == PPM
    assert spot_rate(genesis_ppm=None, override=None) == PPM
    for bad in (0, -5, PPM + 1, True, "1"):
        with pytest.raises(ValidationError):
            spot_rate(genesis_ppm=bad, override=None)


def test_a_spot_check_waits_for_the_next_round_and_a_full_check_does_not() -> None:
    assert not ready(rate_ppm=100_000, submission_round=5, current_round=5)
    assert ready(rate_ppm=100_000, submission_round=5, current_round=6)
    assert ready(rate_ppm=PPM, submission_round=5, current_round=5)


def test_trace_refs_are_validated_and_fetched_or_none(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "blocks")
    cid = store.add_bytes(b"trace bytes")
    ref = TraceRef.of(cid, "ab" * 32)
    assert ref is not None and fetch_trace(store, ref) == b"trace bytes"
    assert TraceRef.of("", "ab" * 32) is None and TraceRef.of(cid, "xyz") is None
    assert TraceRef.of(None, None) is None
    missing = Blockstore(tmp_path / "other").add_bytes(b"elsewhere")
    assert fetch_trace(store, TraceRef(missing, "ab" * 32)) is None
    assert fetch_trace(store, None) is None


def _judge(
    shard: Shard,
    model: torch.nn.Module,
    update: bytes,
    trace: bytes | None,
    root: str | None,
    *,
    rate: int = 100_000,
    seed: str | None = "cd" * 32,
) -> Verdict:
    return judge(
        task=TASK,
        submitted=update,
        trace=trace,
        trace_root=root,
        model=model,
        adapter_state=None,
        shard=shard,
        residual=None,
        executor_class=CPU_DET_V1,
        device="cpu",
        rate_ppm=rate,
        next_round_seed=seed,
        submission_id=11,
    )


def test_judge_spot_checks_honest_work_and_rejects_a_cheat(shard: Shard) -> None:
    model = make_tiny_model(0)
    sub, trace = build_traced_submission(
        task=TASK, model=model, adapter_state=None, shard=shard, residual=None
    )
    data = encode_trace(trace)
    spot = _judge(shard, model, sub.encoded, data, trace.root)
    assert spot.accepted and spot.reason.startswith("spot check:"), spot.reason
    full = _judge(shard, model, sub.encoded, None, None)
    assert full.accepted and full.reason == "digest matches re-execution"
    assert _judge(shard, model, sub.encoded, data, trace.root, seed=None).reason == full.reason
    assert _judge(shard, model, sub.encoded, data, trace.root, rate=PPM).reason == full.reason
    wrong_root = _judge(shard, model, sub.encoded, data, "00" * 32)
    assert wrong_root.accepted and "escalated" in wrong_root.reason
    from r3mes.work.training import initial_adapter_state

    junk = random_update(task=TASK, adapter_state=initial_adapter_state(model, TASK), seed=3)
    cheat = _judge(shard, model, junk.encoded, data, trace.root)
    assert not cheat.accepted and "escalated" in cheat.reason
