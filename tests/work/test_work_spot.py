"""Spot checks, traces and disputes on the tiny model, against the cheat catalogue."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from r3mes.work.cheats import Setting, Work, honest_run, miner_cheats, publish
from r3mes.work.data import TokenDataset, shard_of
from r3mes.work.dispute import referee_step, settle
from r3mes.work.encoding import decode_update
from r3mes.work.errors import EncodingError, WorkError
from r3mes.work.spot import (
    DEFAULT_SPOT_PPM,
    SpotResult,
    adam_screen,
    check_segment,
    precheck,
    sample_count,
    spot_seed,
    spot_segments,
    spot_verify,
)
from r3mes.work.task import Task
from r3mes.work.trace import decode_trace, encode_trace, trace_of
from r3mes.work.training import initial_adapter_state, train_update, trained_layout

STEPS = 8


@pytest.fixture
def setting(
    domain_dataset: TokenDataset, tiny_model: torch.nn.Module, make_task: Callable[..., Task]
) -> Setting:
    task = make_task(hyper={"steps": STEPS}, adapter_cid="genesis")
    adapter = initial_adapter_state(tiny_model, task)
    shard = shard_of(domain_dataset, shard_index=task.shard_index, n_shards=task.n_shards)
    return Setting(task, tiny_model, adapter, shard, None)


def _spot(s: Setting, work: Work, *, seed: bytes, rate: int = DEFAULT_SPOT_PPM) -> SpotResult:
    return spot_verify(
        task=s.task,
        submitted=work.update,
        trace_bytes=work.trace,
        trace_root=None if work.trace is None else decode_trace(work.trace).root,
        model=s.model,
        adapter_state=s.adapter,
        shard=s.shard,
        residual=s.residual,
        executor_class=s.task.executor_class,
        seed=seed,
        rate_ppm=rate,
    )


def test_sampling_is_seeded_sized_and_in_range() -> None:
    seed = spot_seed(next_round_seed="ab" * 32, submission_id=7)
    assert seed != spot_seed(next_round_seed="ab" * 32, submission_id=8)
    assert seed != spot_seed(next_round_seed="cd" * 32, submission_id=7)
    picks = spot_segments(seed=seed, segments=64, rate_ppm=100_000)
    assert picks == spot_segments(seed=seed, segments=64, rate_ppm=100_000)
    assert len(picks) == 7 == len(set(picks)) and all(0 <= j < 64 for j in picks)
    assert sample_count(4, 100_000) == 1 and sample_count(4, 1_000_000) == 4
    seen = {j for i in range(200) for j in spot_segments(seed=bytes([i]), segments=10, rate_ppm=1)}
    assert seen == set(range(10))  # every segment can be drawn
    for bad in (0, -1, 1_000_001, True):
        with pytest.raises(WorkError):
            sample_count(4, bad)
    with pytest.raises(WorkError):
        spot_seed(next_round_seed="ab", submission_id=-1)


def test_trace_round_trips_and_rejects_tampering(setting: Setting) -> None:
    result = honest_run(setting)
    trace = trace_of(result, task_id=setting.task.task_id, every=3)
    assert sorted(trace.checkpoints) == [3, 6, 8]
    data = encode_trace(trace)
    back = decode_trace(data)
    assert back.step_digests == trace.step_digests and back.root == trace.root
    assert all(back.checkpoints[i].digest() == result.step_digests[i] for i in (3, 6, 8))
    assert encode_trace(back) == data
    for bad in (data[:-1], data + b"\0", b"", data[:8] + b"[" + data[9:]):
        with pytest.raises(EncodingError):
            decode_trace(bad)
    with pytest.raises(EncodingError):
        decode_trace(data, max_bytes=len(data) - 1)


def test_honest_work_passes_the_spot_check_at_every_seed(setting: Setting) -> None:
    result = honest_run(setting)
    work = publish(setting, result)
    for i in range(3):
        out = _spot(setting, work, seed=bytes([i]))
        assert out.verdict.accepted and not out.escalated, out.verdict.reason
        assert out.steps_run == 1
    # the update is exactly what full training gives, and so is the residual carried on
    raw = train_update(
        task=setting.task, model=setting.model, adapter_state=setting.adapter, shard=setting.shard
    )
    assert torch.equal(raw[sorted(raw)[0]], result.delta[sorted(raw)[0]])


def test_adam_screen_accepts_real_steps_and_refuses_a_jump(setting: Setting) -> None:
    result = honest_run(setting)
    lr = setting.task.hyper.lr_float
    states = [result.checkpoints[i] for i in range(STEPS)] + [result.final]
    assert all(adam_screen(a, b, lr=lr) is None for a, b in zip(states, states[1:], strict=False))
    jump = dataclasses.replace(states[2], params={k: v * 2 for k, v in states[2].params.items()})
    assert adam_screen(states[1], jump, lr=lr) is not None
    skewed = dataclasses.replace(
        states[2], exp_avg_sq={k: v * 4 for k, v in states[2].exp_avg_sq.items()}
    )
    assert adam_screen(states[1], skewed, lr=lr) is not None
    assert adam_screen(states[1], states[3], lr=lr) is not None


@pytest.mark.slow
def test_every_cheat_is_rejected_and_caught_by_the_sample_it_hits(
    setting: Setting, domain_dataset: TokenDataset
) -> None:
    s = setting
    honest = honest_run(s)
    other = dataclasses.replace(
        s, task=dataclasses.replace(s.task, miner="remes1other", shard_index=1)
    )
    other = dataclasses.replace(other, shard=shard_of(domain_dataset, shard_index=1, n_shards=4))
    stale_task = dataclasses.replace(s.task, round=s.task.round - 1, seed=99)
    stale = dataclasses.replace(
        s, task=stale_task, adapter=initial_adapter_state(s.model, stale_task)
    )
    cheats = miner_cheats(
        s,
        honest,
        other=other,
        stale=stale,
        wrong_base=stale.adapter,
        other_shard=shard_of(domain_dataset, shard_index=2, n_shards=4),
    )
    start = s.adapter
    for name, strategies in cheats.items():
        for label, work in strategies:
            try:
                update = decode_update(work.update, layout=trained_layout(start))
            except WorkError:
                continue  # rejected outright (garbled)
            prepared = precheck(
                task=s.task,
                update=update,
                trace_bytes=work.trace,
                trace_root=None,
                start=start,
                residual=s.residual,
                executor_class=s.task.executor_class,
            )
            if isinstance(prepared, str):
                out = _spot(s, work, seed=b"x")  # rejected outright, or escalated and rejected
                assert not out.verdict.accepted, (name, label)
                assert out.escalated or out.steps_run == 0, (name, label)
                continue
            bad = [
                j
                for j in range(STEPS)
                if check_segment(
                    prepared=prepared, task=s.task, model=s.model, shard=s.shard, index=j
                )
            ]
            assert bad, (name, label)
            seed = next(
                bytes([i])
                for i in range(256)
                if set(spot_segments(seed=bytes([i]), segments=STEPS, rate_ppm=DEFAULT_SPOT_PPM))
                & set(bad)
            )
            out = _spot(s, work, seed=seed)
            assert out.escalated and not out.verdict.accepted, (name, label, out.verdict.reason)


def test_dispute_narrows_to_one_step_and_the_referee_sides_with_the_truth(setting: Setting) -> None:
    s = setting
    honest = honest_run(s)
    truth = list(honest.step_digests)
    lie = truth[:5] + ["0" * 64] * (STEPS - 4)  # a validator making up states from step 5

    def referee(lo: int) -> str:
        state = honest.checkpoints[lo]
        return referee_step(
            task=s.task,
            model=s.model,
            adapter_state=s.adapter,
            shard=s.shard,
            checkpoint=state.encode(),
            step=lo,
        )

    out = settle(claimant=truth, respondent=lie, referee=referee)
    assert (out.winner, out.step, out.rounds) == ("claimant", 4, 3)
    out = settle(claimant=lie, respondent=truth, referee=referee)
    assert out.winner == "respondent"
    with pytest.raises(WorkError):
        settle(claimant=truth, respondent=truth, referee=referee)
    with pytest.raises(WorkError):
        referee_step(
            task=s.task,
            model=s.model,
            adapter_state=s.adapter,
            shard=s.shard,
            checkpoint=honest.checkpoints[2].encode(),
            step=3,
        )


def test_the_traced_submission_is_byte_for_byte_the_plain_one(setting: Setting) -> None:
    from r3mes.work.submission import build_submission
    from r3mes.work.trace import build_traced_submission

    s = setting
    plain = build_submission(
        task=s.task, model=s.model, adapter_state=s.adapter, shard=s.shard, residual=None
    )
    traced, trace = build_traced_submission(
        task=s.task, model=s.model, adapter_state=s.adapter, shard=s.shard, residual=None
    )
    again, trace2 = build_traced_submission(
        task=s.task, model=s.model, adapter_state=s.adapter, shard=s.shard, residual=None
    )
    assert traced.encoded == plain.encoded == again.encoded
    assert encode_trace(trace) == encode_trace(trace2)  # the trace is deterministic too
    assert trace.task_id == s.task.task_id and len(trace.step_digests) == STEPS + 1


def test_a_coarse_trace_gets_full_re_execution(setting: Setting) -> None:
    result = honest_run(setting)
    work = publish(setting, result)
    coarse = Work(
        work.update, encode_trace(trace_of(result, task_id=setting.task.task_id, every=7))
    )
    out = _spot(setting, coarse, seed=b"s")
    assert out.escalated and out.verdict.accepted and out.steps_run == STEPS
    assert "every 7 steps" in out.spot_reason
