"""A miner's step trace: the per-step state digests it commits to, and its checkpoints.

Training emits the digest of its full state (LoRA B weights and Adam moments,
`TrainState.digest`) after every step. The trace holds all ``steps + 1`` digests
(``[0]`` = the start) and the states at the segment boundaries ``every, 2*every, ..., steps``
(the final state always; the start is what every validator computes itself). Its Merkle root
(`r3mes.spec.bisection.merkle_root`) is what the miner commits to next to its update; the
trace itself is stored by CID. Validators re-execute sampled segments between checkpoints
(`r3mes.work.spot`), and disputes bisect over the digests (`r3mes.work.dispute`).

Canonical bytes (`encode_trace`): canonical safetensors (`r3mes.work.canonical`) with

    digests                 uint8 (steps + 1, 32): the raw SHA-256 state digests
    {step}/param/{key}      float32 B weights after `step` steps (zero-padded 7-digit step)
    {step}/exp_avg/{key}    float32 Adam first moment
    {step}/exp_avg_sq/{key} float32 Adam second moment

and string metadata ``format = "r3mes-trace"``, ``format_version = "1"``, ``task_id``,
``steps``, ``every``. `decode_trace` accepts only bytes that re-encode to themselves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from r3mes.spec.bisection import merkle_root as _spec_merkle_root
from r3mes.work.canonical import dump_canonical, load_canonical
from r3mes.work.errors import EncodingError
from r3mes.work.training import (
    TrainResult,
    TrainState,
    initial_adapter_state,
    train_state_problem,
    train_with_trace,
)

if TYPE_CHECKING:
    from torch import nn

    from r3mes.work.data import Shard
    from r3mes.work.submission import Submission
    from r3mes.work.task import Task

TRACE_FORMAT = "r3mes-trace"
TRACE_FORMAT_VERSION = "1"
MAX_TRACE_BYTES = 256 << 20
MAX_TRACE_STEPS = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UINT = re.compile(r"^(0|[1-9][0-9]{0,6})$")
_STEP_KEY = re.compile(r"^([0-9]{7})/(param|exp_avg|exp_avg_sq)/(.+)$")
_META_KEYS = {"format", "format_version", "task_id", "steps", "every"}


def checkpoint_steps(steps: int, every: int) -> tuple[int, ...]:
    """Steps a trace keeps a state for: every `every`-th step, and always the last."""
    if not 1 <= every <= steps:
        raise EncodingError(f"checkpoint interval must be in [1, {steps}], got {every}")
    marks = list(range(every, steps + 1, every))
    if marks[-1] != steps:
        marks.append(steps)
    return tuple(marks)


def segment_bounds(steps: int, every: int) -> tuple[int, ...]:
    """Segment boundaries ``0, every, ..., steps``: segment j runs ``bounds[j] -> bounds[j+1]``."""
    return (0, *checkpoint_steps(steps, every))


@dataclass(frozen=True)
class StepTrace:
    """What a miner publishes about how it trained one task."""

    task_id: str
    every: int
    """Checkpoint interval in steps (segment length)."""
    step_digests: tuple[str, ...]
    """`TrainState.digest` after 0, 1, ..., steps steps."""
    checkpoints: dict[int, TrainState] = field(repr=False)
    """States at `checkpoint_steps(steps, every)`."""

    @property
    def steps(self) -> int:
        return len(self.step_digests) - 1

    @property
    def root(self) -> str:
        """Merkle root of the step digests: the miner's on-ledger commitment."""
        return _spec_merkle_root(self.step_digests)


def trace_of(result: TrainResult, *, task_id: str, every: int) -> StepTrace:
    """The trace of a finished run (`train_with_trace` with ``checkpoint_every=every``)."""
    steps = len(result.step_digests) - 1
    keep = checkpoint_steps(steps, every)
    states = {**result.checkpoints, steps: result.final}
    missing = [s for s in keep if s not in states]
    if missing:
        raise EncodingError(f"the run kept no state for steps {missing[:4]}; train with every")
    return StepTrace(task_id, every, tuple(result.step_digests), {s: states[s] for s in keep})


def encode_trace(trace: StepTrace) -> bytes:
    """The canonical bytes of `trace` (see module docstring)."""
    steps = trace.steps
    if not 1 <= steps <= MAX_TRACE_STEPS:
        raise EncodingError(f"a trace covers 1..{MAX_TRACE_STEPS} steps, got {steps}")
    if not _HEX64.fullmatch(trace.task_id) or not all(
        isinstance(d, str) and _HEX64.fullmatch(d) for d in trace.step_digests
    ):
        raise EncodingError("task id and step digests must be 64 lowercase hex characters")
    if set(trace.checkpoints) != set(checkpoint_steps(steps, trace.every)):
        raise EncodingError("trace checkpoints must be exactly the checkpoint steps")
    raw = b"".join(bytes.fromhex(d) for d in trace.step_digests)
    tensors = {"digests": torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(-1, 32).copy())}
    for step, state in trace.checkpoints.items():
        if state.step != step or train_state_problem(state) is not None:
            raise EncodingError(f"checkpoint {step} is not a training state after {step} steps")
        for part, group in (
            ("param", state.params),
            ("exp_avg", state.exp_avg),
            ("exp_avg_sq", state.exp_avg_sq),
        ):
            tensors |= {f"{step:07d}/{part}/{k}": v for k, v in group.items()}
    meta = {
        "format": TRACE_FORMAT,
        "format_version": TRACE_FORMAT_VERSION,
        "task_id": trace.task_id,
        "steps": str(steps),
        "every": str(trace.every),
    }
    return dump_canonical(tensors, meta)


def decode_trace(data: bytes, *, max_bytes: int = MAX_TRACE_BYTES) -> StepTrace:
    """Strictly decode `encode_trace` bytes; anything else raises `EncodingError`."""
    tensors, meta = load_canonical(data, max_bytes=max_bytes)
    if set(meta) != _META_KEYS or meta["format"] != TRACE_FORMAT:
        raise EncodingError(f"not an {TRACE_FORMAT} encoding (metadata {sorted(meta)})")
    if meta["format_version"] != TRACE_FORMAT_VERSION:
        raise EncodingError(f"unsupported trace version {meta['format_version']!r}")
    if not _HEX64.fullmatch(meta["task_id"]):
        raise EncodingError("trace task_id must be 64 lowercase hex characters")
    if not (_UINT.fullmatch(meta["steps"]) and _UINT.fullmatch(meta["every"])):
        raise EncodingError("trace steps and every must be canonical decimals")
    steps, every = int(meta["steps"]), int(meta["every"])
    if not 1 <= steps <= MAX_TRACE_STEPS:
        raise EncodingError(f"a trace covers 1..{MAX_TRACE_STEPS} steps, got {steps}")
    digests = tensors.pop("digests", None)
    if digests is None or digests.dtype != torch.uint8 or tuple(digests.shape) != (steps + 1, 32):
        raise EncodingError(f"trace 'digests' must be uint8 of shape ({steps + 1}, 32)")
    step_digests = tuple(bytes(row.tolist()).hex() for row in digests)
    groups: dict[int, tuple[dict[str, torch.Tensor], ...]] = {}
    for name, t in tensors.items():
        m = _STEP_KEY.fullmatch(name)
        if m is None:
            raise EncodingError(f"trace holds an unexpected tensor {name!r}")
        step = int(m.group(1))
        parts = groups.setdefault(step, ({}, {}, {}))
        parts[("param", "exp_avg", "exp_avg_sq").index(m.group(2))][m.group(3)] = t
    if set(groups) != set(checkpoint_steps(steps, every)):
        raise EncodingError("trace checkpoints are not exactly its checkpoint steps")
    checkpoints = {}
    for step, (p, m1, m2) in sorted(groups.items()):
        state = TrainState(step, p, m1, m2)
        problem = train_state_problem(state)
        if problem:
            raise EncodingError(f"trace checkpoint {step} is not a training state: {problem}")
        checkpoints[step] = state
    return StepTrace(meta["task_id"], every, step_digests, checkpoints)


def trace_digest(data: bytes) -> str:
    """SHA-256 (hex) of encoded trace bytes."""
    return hashlib.sha256(data).hexdigest()


def build_traced_submission(
    *,
    task: Task,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    residual: Mapping[str, torch.Tensor] | None,
    every: int = 1,
) -> tuple[Submission, StepTrace]:
    """Train `task` on the CPU keeping its trace, and encode the update: the miner's job.

    The update is byte for byte what `r3mes.work.submission.build_submission` gives on the
    CPU (the same run); the trace is what the miner publishes and commits to (`root`).
    """
    from r3mes.work.executor import CPU_DET_V1
    from r3mes.work.submission import encode_for_task

    start = adapter_state if adapter_state is not None else initial_adapter_state(model, task)
    result = train_with_trace(
        task=task, model=model, adapter_state=start, shard=shard, checkpoint_every=every
    )
    sub = encode_for_task(task=task, raw=result.delta, residual=residual, executor_class=CPU_DET_V1)
    return sub, trace_of(result, task_id=task.task_id, every=every)
