"""FAULT INJECTION: the cheat catalogue - what a dishonest miner submits, with its trace.

FAULT INJECTION for the verification benchmark and tests only. Each miner cheat returns the
update bytes AND the step trace it publishes with them, built the way a cheater who wants to
pass spot checks would build it: wherever it can, the trace is internally consistent (every
checkpoint hashes to its digest, the final state encodes to the update, each step is an exact
Adam step of some gradient, using `r3mes.work.training`'s own Adam step), so only the steps
whose gradient is not the task's give it away.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from r3mes.work.data import Shard
from r3mes.work.submission import encode_for_task
from r3mes.work.task import Task
from r3mes.work.trace import encode_trace, trace_of
from r3mes.work.training import (
    TrainResult,
    TrainState,
    _adam_step,
    start_state,
    train_with_trace,
)

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Setting:
    """One miner's task and everything an honest run of it needs."""

    task: Task
    model: nn.Module
    adapter: Tensors
    """The adapter version the task trains from."""
    shard: Shard
    residual: Tensors | None


@dataclass(frozen=True)
class Work:
    """What a miner publishes: update bytes and trace bytes (None: no trace)."""

    update: bytes
    trace: bytes | None


def honest_run(s: Setting) -> TrainResult:
    return train_with_trace(
        task=s.task, model=s.model, adapter_state=s.adapter, shard=s.shard, checkpoint_every=1
    )


def publish(s: Setting, result: TrainResult, *, task: Task | None = None) -> Work:
    """The update and trace of a finished run, labelled for `task` (default: the setting's)."""
    task = task or s.task
    start = start_state(s.adapter)
    raw = {k: result.final.params[k] - start.params[k] for k in sorted(start.params)}
    sub = encode_for_task(
        task=task, raw=raw, residual=s.residual, executor_class=task.executor_class
    )
    trace = trace_of(result, task_id=task.task_id, every=1)
    return Work(sub.encoded, encode_trace(trace))


def forge_steps(
    states: list[TrainState],
    *,
    steps: int,
    lr: float,
    gradient: Callable[[int, TrainState], Mapping[str, torch.Tensor]],
) -> TrainResult:
    """Extend `states` (after 0..k steps) to `steps` steps with made-up gradients.

    Each forged state is an exact Adam step of `gradient(step, state)`, so it passes every
    check that needs no forward pass; only re-running the step shows the gradient is wrong.
    """
    states = list(states)
    while len(states) <= steps:
        prev = states[-1]
        params = {k: v.clone() for k, v in prev.params.items()}
        states.append(_adam_step(prev, params, dict(gradient(prev.step, prev)), lr))
    digests = tuple(st.digest() for st in states)
    final = states[steps]
    delta = {k: final.params[k] - states[0].params[k] for k in sorted(final.params)}
    return TrainResult(delta, final, digests, dict(enumerate(states)))


def _states(result: TrainResult) -> list[TrainState]:
    return [result.checkpoints[i] for i in range(len(result.step_digests) - 1)] + [result.final]


def _with_final_params(s: Setting, honest: TrainResult, params: Tensors) -> Work:
    """A trace whose last state is `params` (moments kept): one made-up final step."""
    states = _states(honest)
    states[-1] = dataclasses.replace(states[-1], params=params)
    digests = tuple(st.digest() for st in states)
    start = states[0]
    delta = {k: params[k] - start.params[k] for k in sorted(params)}
    return publish(s, TrainResult(delta, states[-1], digests, dict(enumerate(states))))


def _repeat_tail(half: TrainResult, steps: int) -> TrainResult:
    """Claim `steps` steps by repeating the last real state (renumbered)."""
    states = _states(half)
    last = states[-1]
    states += [dataclasses.replace(last, step=j) for j in range(last.step + 1, steps + 1)]
    digests = tuple(st.digest() for st in states)
    return TrainResult(half.delta, states[-1], digests, dict(enumerate(states)))


def _update_only(s: Setting, honest: TrainResult, raw: Tensors) -> Work:
    """The update of `raw` with the HONEST trace next to it."""
    sub = encode_for_task(
        task=s.task, raw=raw, residual=s.residual, executor_class=s.task.executor_class
    )
    return Work(sub.encoded, encode_trace(trace_of(honest, task_id=s.task.task_id, every=1)))


def _random_grad(seed: int) -> Callable[[int, TrainState], Tensors]:
    def grad(step: int, state: TrainState) -> Tensors:
        gen = torch.Generator().manual_seed(seed * 100_003 + step)
        return {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in state.params.items()}

    return grad


def miner_cheats(
    s: Setting,
    honest: TrainResult,
    *,
    other: Setting,
    stale: Setting,
    wrong_base: Tensors,
    other_shard: Shard,
) -> dict[str, list[tuple[str, Work]]]:
    """Every miner cheat of the catalogue, each with the strategies a cheater could use.

    `other` is another miner's task of the same round, `stale` this miner's task of an
    earlier round (another adapter version), `wrong_base` an adapter version that is not the
    task's, `other_shard` a shard that is not the task's.
    """
    lr, steps = s.task.hyper.lr_float, s.task.hyper.steps
    start = start_state(s.adapter)
    delta = honest.delta
    scaled = {k: start.params[k] + 2 * delta[k] for k in delta}
    flipped = {k: start.params[k] - delta[k] for k in delta}
    other_run = honest_run(other)
    stale_run = honest_run(stale)
    # the first half of the task's own steps (what running only them gives, bit for bit)
    prefix = _states(honest)[: steps // 2 + 1]
    half = TrainResult(
        {k: prefix[-1].params[k] - start.params[k] for k in sorted(start.params)},
        prefix[-1],
        tuple(st.digest() for st in prefix),
        dict(enumerate(prefix)),
    )
    last_grad: dict[str, Tensors] = {}

    def repeat_last(step: int, state: TrainState) -> Tensors:
        # the half-steps cheater reuses the gradient its last real step implied
        if "g" not in last_grad:
            prev, cur = _states(half)[-2:]
            last_grad["g"] = {
                k: (cur.exp_avg[k] - prev.exp_avg[k] * 0.9) / 0.1 for k in cur.exp_avg
            }
        return last_grad["g"]

    wrong = Setting(s.task, s.model, wrong_base, s.shard, s.residual)
    # the other shard's data under this task's shard label (training checks the label)
    relabelled = dataclasses.replace(
        other_shard, shard_index=s.shard.shard_index, n_shards=s.shard.n_shards
    )
    shard_run = train_with_trace(
        task=s.task, model=s.model, adapter_state=s.adapter, shard=relabelled, checkpoint_every=1
    )
    victim = publish(other, other_run)
    stale_own = publish(stale, stale_run)
    garbled = bytearray(publish(s, honest).update)
    garbled[len(garbled) // 2] ^= 0xFF
    honest_trace = publish(s, honest).trace
    return {
        "random": [
            (
                "random update, honest trace",
                _update_only(s, honest, {k: torch.randn_like(v) * 0.01 for k, v in delta.items()}),
            ),
            (
                "Adam on random gradients (no forward pass)",
                publish(s, forge_steps([start], steps=steps, lr=lr, gradient=_random_grad(7))),
            ),
        ],
        "scaled": [
            (
                "2x update, honest trace",
                _update_only(s, honest, {k: 2 * v for k, v in delta.items()}),
            ),
            ("2x update, forged final state", _with_final_params(s, honest, scaled)),
        ],
        "sign_flipped": [
            ("-update, honest trace", _update_only(s, honest, {k: -v for k, v in delta.items()})),
            ("-update, forged final state", _with_final_params(s, honest, flipped)),
        ],
        "copied": [
            ("another miner's bytes", Work(victim.update, victim.trace)),
            ("another miner's run relabelled", publish(s, other_run)),
        ],
        "stale": [
            ("earlier round's bytes", stale_own),
            ("earlier round's run relabelled", publish(s, stale_run)),
        ],
        "garbled": [("one byte flipped", Work(bytes(garbled), honest_trace))],
        "wrong_base": [("trained from another adapter version", publish(s, honest_run(wrong)))],
        "half_steps": [
            (
                "half the steps, rest forged from the last gradient",
                publish(s, forge_steps(_states(half), steps=steps, lr=lr, gradient=repeat_last)),
            ),
            ("half the steps, last state repeated", publish(s, _repeat_tail(half, steps))),
        ],
        "other_shard": [("trained on another shard", publish(s, shard_run))],
    }
