"""Spot checks: re-execute a sampled fraction of a task's steps, escalate on any mismatch.

A miner publishes its step trace (`r3mes.work.trace`) and commits to its Merkle root. A
validator then, for a fraction `rate_ppm` of the trace's checkpoint segments, chosen by a seed
the miner could not know when it submitted (`spot_seed`: the NEXT round's seed, i.e. the hash
of the last block of the submission's round), takes the checkpoint at the segment's start,
re-runs the segment and compares every state digest in it. Before that, at the cost of
hashing, it checks what needs no training at all:

* the trace is for this task and hashes to the committed root;
* its start digest is the validator's own start state (right base model, adapter version and
  LoRA initialisation: a stale or wrong-base run fails here);
* the final checkpoint hashes to the last digest, and re-encoding ``final - start`` with the
  miner's replayed residual gives exactly the submitted update (a random, scaled,
  sign-flipped or copied update that is not what the trace trained fails here);
* the trace keeps a checkpoint after every step (``every == 1``; a coarser trace lets its
  author choose how few segments there are, so it gets full re-execution); every checkpoint
  hashes to its digest and every step is an Adam step from the one before (`adam_screen`):
  the weights follow bit for bit from the committed moments, and the moments from one common
  gradient. A forger's only freedom left is that gradient, and Adam moves a weight by at most
  a few learning rates per step, so a scaled, sign-flipped or random final state cannot be
  reached in one made-up step.

What is left to a cheater is a trace whose gradients are not the task's (another shard, fewer
steps than claimed, made-up gradients); every such step is caught when its segment is
sampled, and any failure escalates to full re-execution (`r3mes.work.verify`), whose verdict
is final. An honest miner never fails a spot check: its trace is what
deterministic training gives on every machine of its executor class.

Spot checks judge only deterministic executor classes (the digests must reproduce bit for
bit); other submissions get full re-execution.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from r3mes.work.data import Shard
from r3mes.work.encoding import DecodedUpdate, decode_update
from r3mes.work.errors import CompressionError, EncodingError, TrainingError, WorkError
from r3mes.work.executor import (
    Device,
    current_executor_class,
    deterministic_cpu,
    is_deterministic_class,
    model_device,
)
from r3mes.work.submission import encode_for_task
from r3mes.work.task import Task
from r3mes.work.trace import StepTrace, decode_trace, segment_bounds
from r3mes.work.training import (
    ADAM_BETA1,
    ADAM_BETA2,
    ADAM_EPS,
    TrainState,
    initial_adapter_state,
    run_steps,
    start_state,
    trained_layout,
)
from r3mes.work.verify import Verdict, _check_identity, verify

log = logging.getLogger(__name__)

PPM = 1_000_000
DEFAULT_SPOT_PPM = 100_000
"""Default share of checkpoint segments re-executed (10 %); a genesis parameter."""


def spot_seed(*, next_round_seed: str, submission_id: int) -> bytes:
    """The sampling seed of a submission: SHA-256("r3mes/spot/v1" | next round seed | id).

    The next round's seed is the hash of the last block of the submission's own round, which
    did not exist when the miner signed.
    """
    if isinstance(submission_id, bool) or not isinstance(submission_id, int) or submission_id < 0:
        raise WorkError(f"submission id must be a non-negative integer, got {submission_id!r}")
    if not isinstance(next_round_seed, str):
        raise WorkError("the next round's seed must be a hex string")
    return hashlib.sha256(
        b"r3mes/spot/v1\x00"
        + next_round_seed.encode("ascii", "replace")
        + b"\x00"
        + submission_id.to_bytes(8, "big")
    ).digest()


def sample_count(segments: int, rate_ppm: int) -> int:
    """How many of `segments` a spot check re-executes: ceil(rate * segments), at least 1."""
    if isinstance(rate_ppm, bool) or not isinstance(rate_ppm, int) or not 0 < rate_ppm <= PPM:
        raise WorkError(f"spot rate must be an integer in (0, {PPM}] ppm, got {rate_ppm!r}")
    if segments < 1:
        raise WorkError("a trace has at least one segment")
    return min(segments, max(1, -(-segments * rate_ppm // PPM)))


def spot_segments(*, seed: bytes, segments: int, rate_ppm: int) -> tuple[int, ...]:
    """Sorted indices of the segments to re-execute: a seeded partial Fisher-Yates shuffle.

    Integers and SHA-256 only, so every validator derives the same sample from the same seed.
    """
    count = sample_count(segments, rate_ppm)
    order = list(range(segments))
    for i in range(count):
        draw = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        j = i + int.from_bytes(draw[:8], "big") % (segments - i)
        order[i], order[j] = order[j], order[i]
    return tuple(sorted(order[:count]))


@dataclass(frozen=True)
class SpotResult:
    """A spot check's outcome and, when it failed, the full re-execution's verdict."""

    verdict: Verdict
    """The final verdict (the spot check's own when it passed or rejected outright)."""
    escalated: bool
    """True when the spot check failed and `verdict` comes from full re-execution."""
    spot_reason: str
    """What the spot check found (why it escalated, or what it checked)."""
    steps_run: int
    """Training steps this validator re-executed (spot segments plus any full re-run)."""


def adam_screen(prev: TrainState, nxt: TrainState, *, lr: float) -> str | None:
    """Why `nxt` is not one Adam step after `prev` for some gradient (None when it is).

    The weights must be exactly what `r3mes.work.training`'s Adam step computes from the
    committed moments (same float32 operations, so bit for bit). The gradient the first moment
    implies, ``g = (m1 - beta1 m0) / (1 - beta1)``, must also give the second moment, within a
    float64 error bound for the rounding of the float32 moments; an honest trace is far
    inside it, and a miss only escalates to full re-execution.
    """
    if nxt.step != prev.step + 1 or set(nxt.params) != set(prev.params):
        return f"checkpoint {nxt.step} does not follow checkpoint {prev.step}"
    t = nxt.step
    bc1, bc2 = 1.0 - ADAM_BETA1**t, 1.0 - ADAM_BETA2**t
    eps32 = float(torch.finfo(torch.float32).eps)
    with torch.no_grad():
        for key in sorted(prev.params):
            p0, m1, v1 = prev.params[key], nxt.exp_avg[key], nxt.exp_avg_sq[key]
            if p0.shape != nxt.params[key].shape or m1.shape != p0.shape or v1.shape != p0.shape:
                return f"checkpoint {t}: {key!r} changes shape"
            p1 = p0.clone()
            p1.sub_(lr * (m1 / bc1) / ((v1 / bc2).sqrt() + ADAM_EPS))
            if not torch.equal(p1, nxt.params[key]):
                return f"step {t - 1}->{t}: weights are not an Adam step of the moments"
            m0, v0 = prev.exp_avg[key].double(), prev.exp_avg_sq[key].double()
            g = (m1.double() - ADAM_BETA1 * m0) / (1.0 - ADAM_BETA1)
            dg = 4 * eps32 * (m1.double().abs() + m0.abs()) / (1.0 - ADAM_BETA1)
            v = ADAM_BETA2 * v0 + (1.0 - ADAM_BETA2) * g * g
            bound = 8 * eps32 * v + (1.0 - ADAM_BETA2) * (2 * g.abs() * dg + dg * dg) + 1e-30
            if bool(((v1.double() - v).abs() > bound).any()) or bool((v1 < 0).any()):
                return f"step {t - 1}->{t}: the moments do not share one gradient"
    return None


class _Mismatch(Exception):
    """A spot check found something that does not match; escalate."""


def _check_trace_frame(
    trace: StepTrace, *, task: Task, root: str | None, start_digest: str
) -> None:
    if trace.task_id != task.task_id:
        raise _Mismatch("the trace is for another task")
    if trace.steps != task.hyper.steps:
        raise _Mismatch(f"the trace covers {trace.steps} steps, the task {task.hyper.steps}")
    if root is not None and trace.root != root:
        raise _Mismatch("the trace does not hash to the committed root")
    if trace.step_digests[0] != start_digest:
        raise _Mismatch("the trace starts from another state (base model or adapter version)")


def _check_segment(
    *,
    trace: StepTrace,
    task: Task,
    model: nn.Module,
    shard: Shard,
    adapter_state: Mapping[str, torch.Tensor],
    begin: int,
    end: int,
) -> None:
    ckpt = start_state(adapter_state) if begin == 0 else trace.checkpoints[begin]
    if ckpt.digest() != trace.step_digests[begin]:
        raise _Mismatch(f"checkpoint {begin} does not hash to its committed digest")
    try:
        _, digests, _ = run_steps(
            task=task, model=model, shard=shard, adapter_state=adapter_state, start=ckpt, stop=end
        )
    except TrainingError as exc:
        raise _Mismatch(f"segment {begin}->{end} cannot be re-run: {exc}") from exc
    for offset, digest in enumerate(digests, start=begin + 1):
        if digest != trace.step_digests[offset]:
            raise _Mismatch(f"step {offset - 1}->{offset} does not reproduce")


def _screen_all(trace: StepTrace, *, start: TrainState, lr: float) -> None:
    """Every checkpoint hashes to its digest and follows the one before by `adam_screen`.

    The same arithmetic as `adam_screen`, over all steps at once: per weight, the states are
    stacked (steps + 1, ...) and the bias corrections become float32 columns, which is
    exactly what the scalar step computes (PyTorch rounds a Python scalar to float32 for a
    float32 tensor; the honest-trace tests hold it to that).
    """
    states = [start] + [trace.checkpoints[i] for i in range(1, trace.steps + 1)]
    for step in range(1, trace.steps + 1):
        if states[step].digest() != trace.step_digests[step]:
            raise _Mismatch(f"checkpoint {step} does not hash to its committed digest")
        if states[step].step != step or set(states[step].params) != set(start.params):
            raise _Mismatch(f"checkpoint {step} does not follow checkpoint {step - 1}")
    corrections = [(1.0 - ADAM_BETA1**i, 1.0 - ADAM_BETA2**i) for i in range(1, trace.steps + 1)]
    eps32 = float(torch.finfo(torch.float32).eps)
    with deterministic_cpu(), torch.no_grad():  # one thread: no pool wake-ups
        for key in sorted(start.params):
            shape = (-1,) + (1,) * start.params[key].dim()
            bc1 = torch.tensor([c[0] for c in corrections], dtype=torch.float32).view(shape)
            bc2 = torch.tensor([c[1] for c in corrections], dtype=torch.float32).view(shape)
            try:
                p = torch.stack([st.params[key] for st in states])
                m = torch.stack([st.exp_avg[key] for st in states])
                v = torch.stack([st.exp_avg_sq[key] for st in states])
            except RuntimeError as exc:
                raise _Mismatch(f"{key!r} changes shape between checkpoints") from exc
            step_ = torch.tensor(lr, dtype=torch.float32) * (m[1:] / bc1)
            want = p[:-1] - step_ / ((v[1:] / bc2).sqrt() + torch.tensor(ADAM_EPS))
            if not torch.equal(want, p[1:]):
                first = int((want != p[1:]).flatten(1).any(1).nonzero()[0]) + 1
                raise _Mismatch(f"step {first - 1}->{first}: weights are not an Adam step")
            m0, m1, v0, v1 = m[:-1].double(), m[1:].double(), v[:-1].double(), v[1:].double()
            g = (m1 - ADAM_BETA1 * m0) / (1.0 - ADAM_BETA1)
            dg = 4 * eps32 * (m1.abs() + m0.abs()) / (1.0 - ADAM_BETA1)
            ve = ADAM_BETA2 * v0 + (1.0 - ADAM_BETA2) * g * g
            bound = 8 * eps32 * ve + (1.0 - ADAM_BETA2) * (2 * g.abs() * dg + dg * dg) + 1e-30
            if bool(((v1 - ve).abs() > bound).any()) or bool((v1 < 0).any()):
                raise _Mismatch("the moments of some step do not share one gradient")


@dataclass(frozen=True)
class Prepared:
    """A submission whose seed-independent checks passed: what the sampled segments need."""

    trace: StepTrace
    start: dict[str, torch.Tensor]
    """The adapter state the task trains from."""
    next_residual: dict[str, torch.Tensor]
    """The miner's residual after this round (what the update's encoding left over)."""


def precheck(
    *,
    task: Task,
    update: DecodedUpdate,
    trace_bytes: bytes | None,
    trace_root: str | None,
    start: Mapping[str, torch.Tensor],
    residual: Mapping[str, torch.Tensor] | None,
    executor_class: str,
) -> Prepared | str:
    """The checks that need no training (module docstring); a string says what failed."""
    try:
        if not (
            is_deterministic_class(executor_class) and update.meta.executor_class == executor_class
        ):
            raise _Mismatch(f"update class {update.meta.executor_class} needs full re-execution")
        if trace_bytes is None:
            raise _Mismatch("no trace was published")
        try:
            trace = decode_trace(trace_bytes)
        except EncodingError as exc:
            raise _Mismatch(f"the trace does not decode: {exc}") from exc
        begin = start_state(start)
        _check_trace_frame(trace, task=task, root=trace_root, start_digest=begin.digest())
        final = trace.checkpoints[trace.steps]
        if final.digest() != trace.step_digests[-1]:
            raise _Mismatch("the final checkpoint does not hash to the last digest")
        if set(final.params) != set(begin.params):
            raise _Mismatch("the final checkpoint does not hold the adapter's B weights")
        raw = {k: final.params[k] - begin.params[k] for k in sorted(begin.params)}
        try:
            expected = encode_for_task(
                task=task, raw=raw, residual=residual, executor_class=update.meta.executor_class
            )
        except (CompressionError, RuntimeError) as exc:
            raise _Mismatch(f"the final checkpoint does not fit the adapter: {exc}") from exc
        if expected.digest != update.digest:
            raise _Mismatch("the update is not what the trace's final state encodes to")
        if trace.every != 1:
            # a coarser trace has no screen, and its chooser picks how few segments there
            # are (every = steps - 1 leaves a forged last step a coin flip): full re-run
            raise _Mismatch(f"the trace keeps a state every {trace.every} steps, not every step")
        _screen_all(trace, start=begin, lr=task.hyper.lr_float)
    except _Mismatch as exc:
        return str(exc)
    return Prepared(trace, dict(start), expected.next_residual)


def check_segment(
    *, prepared: Prepared, task: Task, model: nn.Module, shard: Shard, index: int
) -> str | None:
    """Re-run segment `index` of the trace; what does not reproduce (None: all of it does)."""
    trace = prepared.trace
    bounds = segment_bounds(trace.steps, trace.every)
    try:
        _check_segment(
            trace=trace,
            task=task,
            model=model,
            shard=shard,
            adapter_state=prepared.start,
            begin=bounds[index],
            end=bounds[index + 1],
        )
    except _Mismatch as exc:
        return str(exc)
    return None


def spot_verify(
    *,
    task: Task,
    submitted: bytes,
    trace_bytes: bytes | None,
    trace_root: str | None,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    residual: Mapping[str, torch.Tensor] | None,
    executor_class: str,
    seed: bytes,
    rate_ppm: int,
    device: Device | None = None,
) -> SpotResult:
    """Spot-check `submitted` against its trace (see module docstring); escalate on mismatch.

    `trace_root` is the miner's committed Merkle root (None: not committed; the trace is then
    judged on its own). `device` None means the CPU reference; spot checks re-run on the CPU
    class only, anything else gets full re-execution there. Bytes that do not decode as an
    update, or decode to an update for another task, are rejected outright, as `verify` would.
    """
    start = adapter_state if adapter_state is not None else initial_adapter_state(model, task)
    try:
        update = decode_update(submitted, layout=trained_layout(start))
    except (EncodingError, CompressionError) as exc:
        verdict = Verdict(False, f"malformed update: {exc}", float("inf"), False)
        return SpotResult(verdict, False, "update does not decode", 0)
    problem = _check_identity(task, update)
    if problem:
        return SpotResult(Verdict(False, problem, float("inf"), False), False, problem, 0)
    steps_run = 0
    where = model_device(model) if device is None else device
    prepared: Prepared | str = (
        precheck(
            task=task,
            update=update,
            trace_bytes=trace_bytes,
            trace_root=trace_root,
            start=start,
            residual=residual,
            executor_class=executor_class,
        )
        if current_executor_class(where) == executor_class
        else f"this validator runs {current_executor_class(where)}, not {executor_class}"
    )
    reason: str | None = prepared if isinstance(prepared, str) else None
    chosen: tuple[int, ...] = ()
    if isinstance(prepared, Prepared):
        bounds = segment_bounds(prepared.trace.steps, prepared.trace.every)
        chosen = spot_segments(seed=seed, segments=len(bounds) - 1, rate_ppm=rate_ppm)
        for j in chosen:
            reason = check_segment(prepared=prepared, task=task, model=model, shard=shard, index=j)
            steps_run += bounds[j + 1] - bounds[j]
            if reason:
                break
    if reason is not None or not isinstance(prepared, Prepared):
        log.info("spot check of task %s escalates: %s", task.task_id[:12], reason)
        full = verify(
            task=task,
            submitted=submitted,
            model=model,
            adapter_state=start,
            shard=shard,
            residual=residual,
            executor_class=executor_class,
            device=device,
        )
        escalated = Verdict(
            full.accepted,
            f"spot check escalated ({reason}); full re-execution: {full.reason}",
            full.distance,
            full.digest_match,
            full.next_residual,
        )
        return SpotResult(escalated, True, str(reason), steps_run + task.hyper.steps)
    spot = f"{len(chosen)} of {len(bounds) - 1} segments ({steps_run} steps) reproduce"
    verdict = Verdict(True, f"spot check: {spot}", 0.0, True, prepared.next_residual)
    return SpotResult(verdict, False, spot, steps_run)
