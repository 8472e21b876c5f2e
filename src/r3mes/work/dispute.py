"""The work side of a dispute: answer bisection queries, and re-execute the one step.

When two parties disagree about a submission (a miner and a rejecting validator, or two
validators), each holds the step digests of the task as it trained it: the miner its
published trace, a validator the trace of its own re-execution (`own_trace`). The ledger
bisects over those digests (`r3mes.spec.bisection`) until they agree at step ``lo`` and
differ at ``lo + 1``; referees then re-run that single step from the agreed checkpoint
(`referee_step`) and the side whose digest at ``lo + 1`` matches wins. `settle` plays the
whole exchange off-chain (tests, benchmarks, and a node checking a dispute before it opens
one); it takes O(log steps) rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from r3mes.spec.bisection import Bisection, advance, is_narrowed, open_bisection, query_step
from r3mes.work.data import Shard
from r3mes.work.errors import WorkError
from r3mes.work.proof import decode_train_state
from r3mes.work.task import Task
from r3mes.work.trace import StepTrace, trace_of
from r3mes.work.training import TrainState, initial_adapter_state, run_steps, train_with_trace

Winner = Literal["claimant", "respondent", "neither"]


def own_trace(
    *,
    task: Task,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    every: int = 1,
) -> StepTrace:
    """This node's own trace of `task` (what it posts when it is a party to a dispute)."""
    result = train_with_trace(
        task=task, model=model, adapter_state=adapter_state, shard=shard, checkpoint_every=every
    )
    return trace_of(result, task_id=task.task_id, every=every)


def referee_step(
    *,
    task: Task,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    checkpoint: bytes | TrainState,
    step: int,
) -> str:
    """The digest of the state after ONE step from the checkpoint after `step` steps.

    `checkpoint` is `TrainState.encode()` bytes (decoded strictly) or a state. This is what a
    referee posts; the caller compares it with both parties' digests at ``step + 1``.
    """
    state = decode_train_state(checkpoint) if isinstance(checkpoint, bytes) else checkpoint
    if state.step != step or not 0 <= step < task.hyper.steps:
        raise WorkError(f"checkpoint is after {state.step} steps, the dispute is at step {step}")
    start = adapter_state if adapter_state is not None else initial_adapter_state(model, task)
    _, digests, _ = run_steps(
        task=task, model=model, shard=shard, adapter_state=start, start=state, stop=step + 1
    )
    return digests[0]


@dataclass(frozen=True)
class DisputeOutcome:
    """How an off-chain dispute ended."""

    winner: Winner
    step: int
    """The disputed step: the parties agree after `step` steps and differ after `step + 1`."""
    rounds: int
    """Bisection rounds (one message round each) before the referee step."""
    referee_digest: str


def settle(
    *,
    claimant: Sequence[str],
    respondent: Sequence[str],
    referee: Callable[[int], str],
) -> DisputeOutcome:
    """Bisect two digest lists that agree at 0 and differ at the end; referee the one step.

    `referee(lo)` returns the digest after one step from the agreed state after `lo` steps.
    """
    if len(claimant) != len(respondent) or len(claimant) < 2:
        raise WorkError("both parties must post digests for the same number of steps (>= 1)")
    if claimant[0] != respondent[0]:
        raise WorkError("the parties disagree about the start state; nothing to bisect")
    if claimant[-1] == respondent[-1]:
        raise WorkError("the parties agree about the final state; nothing to bisect")
    b: Bisection = open_bisection(len(claimant) - 1)
    while not is_narrowed(b):
        mid = query_step(b)
        b = advance(b, agree=claimant[mid] == respondent[mid])
    digest = referee(b.lo)
    winner: Winner = (
        "claimant"
        if digest == claimant[b.hi]
        else "respondent"
        if digest == respondent[b.hi]
        else "neither"
    )
    return DisputeOutcome(winner, b.lo, b.rounds, digest)
