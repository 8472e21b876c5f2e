"""Deterministic LoRA training of one task (executor class `cpu-fp32-det-v1`).

`train_update` returns the raw LoRA delta ``trained - start`` (float32, PEFT key names) for a
task, starting from the adapter version's state. Everything that could vary is pinned:

* LoRA initialisation (only when there is no adapter yet): `initial_adapter_state`, seeded by
  the ROUND seed, so all miners of a round start from the same point;
* batch order: sample j of the run is position ``perm_e[j % n]`` of the shard, where
  ``e = j // n`` and ``perm_e`` is `torch.randperm(n)` drawn from a generator seeded with
  ``task.derived_seed(f"batch/{e}")`` -- random access per step, for `verify_steps`;
* each sequence is the first ``seq_len`` tokens of its chunk, loss is next-token cross-entropy;
* only the B matrices train; A stays at the adapter's value (FFA-LoRA, Sun et al. 2024).
  With A shared by every miner, a LoRA update is linear in B, so the weighted mean of B deltas
  that `aggregate` takes is exactly the mean of the miners' weight changes (averaging A and B
  separately is not), and top-k sparsifies one factor instead of a product. The delta therefore
  holds `lora_B` keys only;
* the optimizer is Adam written out here (beta1 0.9, beta2 0.999, eps 1e-8, bias-corrected,
  no weight decay) so its state is explicit and can be checkpointed;
* numerics run under `deterministic_cpu()` on the CPU (`cpu-fp32-det-v1`); `device="cuda"`
  (or "mps") trains where the model lives, under `executor_numerics`, and the result belongs
  to that device's non-deterministic class (`r3mes.work.executor`). Deltas, states and
  checkpoints come back on the CPU either way;
* recomputing each decoder layer in the backward (`model.gradient_checkpointing`, set by
  `set_gradient_checkpointing`) changes memory and time only: the gradients, so the update
  bytes and step digests, are bit-identical with and without it. It is a local execution
  choice (a miner's or validator's `--gradient-checkpointing auto|on|off`), not part of the
  task. `auto` turns it on for models of `RECOMPUTE_AUTO_MIN_PARAMS` parameters or more: at the
  2B-4T shape a step (r=8 on q/v/o, 256 tokens) peaks at 5.9 GB resident without it and 3.9 GB
  with it, for one more forward's time (3.9 no-grad forwards a step against 3.4 without,
  docs/benchmarks.md); a small model's activations are a few MB, and there the extra forward
  buys nothing.

The model is borrowed: an adapter named `WORK_ADAPTER` is added for the run and removed after,
and parameters' `requires_grad` flags are restored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from r3mes.work.canonical import dump_canonical
from r3mes.work.data import Shard
from r3mes.work.errors import TrainingError
from r3mes.work.executor import (
    Device,
    as_device,
    deterministic_cpu,
    executor_numerics,
    model_device,
    same_device,
)
from r3mes.work.task import Task

if TYPE_CHECKING:
    from r3mes.model.lora import LoraConfig

log = logging.getLogger(__name__)

WORK_ADAPTER = "r3mes-work"
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8
Tensors = dict[str, torch.Tensor]
GradientCheckpointing = Literal["auto", "on", "off"]
GRADIENT_CHECKPOINTING_MODES: tuple[str, ...] = get_args(GradientCheckpointing)
RECOMPUTE_AUTO_MIN_PARAMS = 1_000_000_000
"""`auto` recomputes layers in the backward for models of at least this many parameters."""


def check_gradient_checkpointing(mode: str) -> str:
    """`mode` if it is "auto", "on" or "off", else TrainingError."""
    if mode not in GRADIENT_CHECKPOINTING_MODES:
        raise TrainingError(
            f"gradient checkpointing must be one of {', '.join(GRADIENT_CHECKPOINTING_MODES)}, "
            f"got {mode!r}"
        )
    return mode


def wants_gradient_checkpointing(
    model: nn.Module, mode: str, *, auto_min_params: int = RECOMPUTE_AUTO_MIN_PARAMS
) -> bool:
    """Whether training `model` should recompute its layers in the backward under `mode`."""
    if check_gradient_checkpointing(mode) != "auto":
        return mode == "on"
    count = getattr(model, "num_parameters", None)
    params = count() if callable(count) else sum(p.numel() for p in model.parameters())
    return int(params) >= auto_min_params


def set_gradient_checkpointing(
    model: nn.Module, mode: str, *, auto_min_params: int = RECOMPUTE_AUTO_MIN_PARAMS
) -> bool:
    """Set `model.gradient_checkpointing` as `mode` says; returns whether it is now on.

    Every training path (`run_steps`, so mining, verification, spot checks and disputes)
    follows the model's flag. The update bytes do not depend on it (module docstring).
    """
    on = wants_gradient_checkpointing(model, mode, auto_min_params=auto_min_params)
    if not hasattr(model, "gradient_checkpointing"):
        if on:
            raise TrainingError(f"{type(model).__name__} cannot recompute layers in the backward")
        return False
    # setattr: nn.Module types its attributes as Tensor | Module
    setattr(model, "gradient_checkpointing", on)  # noqa: B010
    return on


@dataclass(frozen=True)
class TrainState:
    """Everything the next step depends on: LoRA weights and Adam moments after `step` steps."""

    step: int
    params: Tensors
    exp_avg: Tensors
    exp_avg_sq: Tensors

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical encoding of this state."""
        import hashlib

        return hashlib.sha256(self.encode()).hexdigest()

    def encode(self) -> bytes:
        tensors = {f"param/{k}": v for k, v in self.params.items()}
        tensors |= {f"exp_avg/{k}": v for k, v in self.exp_avg.items()}
        tensors |= {f"exp_avg_sq/{k}": v for k, v in self.exp_avg_sq.items()}
        return dump_canonical(tensors, {"step": str(self.step)})


def train_state_problem(state: TrainState) -> str | None:
    """Why `state` cannot be trained from (None when it can).

    Params and both Adam moments must hold the same keys, each a float32 tensor of the
    param's shape; the step must be a non-negative integer.
    """
    if isinstance(state.step, bool) or not isinstance(state.step, int) or state.step < 0:
        return f"step must be a non-negative integer, got {state.step!r}"
    parts = (state.params, state.exp_avg, state.exp_avg_sq)
    if not all(isinstance(p, Mapping) for p in parts):
        return "params and Adam moments must be mappings of tensors"
    if not state.params or not set(state.params) == set(state.exp_avg) == set(state.exp_avg_sq):
        return "params and Adam moments must have the same, non-empty keys"
    for key, param in state.params.items():
        tensors = (param, state.exp_avg[key], state.exp_avg_sq[key])
        if not all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in tensors):
            return f"{key!r}: params and Adam moments must be float32 tensors"
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            return f"{key!r}: param and Adam moments differ in shape ({sorted(shapes)})"
    return None


@dataclass(frozen=True)
class TrainResult:
    """A finished run: the delta, the final state and the per-step state digests."""

    delta: Tensors
    final: TrainState
    step_digests: tuple[str, ...]
    """digest of the state after 0, 1, ..., steps steps (steps + 1 entries)."""
    checkpoints: dict[int, TrainState]
    """States kept every `checkpoint_every` steps (always includes step 0)."""


def initial_adapter_state(model: nn.Module, task: Task) -> Tensors:
    """The genesis adapter for `task`'s LoRA config: A Kaiming-init from the round seed, B 0."""
    from r3mes.model.lora import apply_lora, lora_state_dict, remove_adapter

    gen = torch.Generator().manual_seed(task.seed)
    with deterministic_cpu():
        apply_lora(model, task.lora_config(), name=WORK_ADAPTER, generator=gen)
        try:
            return {k: v.cpu() for k, v in lora_state_dict(model, WORK_ADAPTER).items()}
        finally:
            remove_adapter(model, WORK_ADAPTER)


def batch_positions(task: Task, shard_len: int, step: int) -> list[int]:
    """Shard positions of the `batch_size` sequences used at `step` (see module docstring)."""
    bs = task.hyper.batch_size
    out: list[int] = []
    perms: dict[int, torch.Tensor] = {}
    for j in range(step * bs, (step + 1) * bs):
        epoch = j // shard_len
        if epoch not in perms:
            gen = torch.Generator().manual_seed(task.derived_seed(f"batch/{epoch}"))
            perms[epoch] = torch.randperm(shard_len, generator=gen)
        out.append(int(perms[epoch][j % shard_len]))
    return out


def batch_for_step(task: Task, shard: Shard, step: int) -> torch.Tensor:
    """Token ids (batch_size, seq_len) int64 of `step`."""
    chunks = [
        shard.dataset.chunk(shard.indices[p]) for p in batch_positions(task, len(shard), step)
    ]
    return torch.from_numpy(np.stack(chunks)[:, : task.hyper.seq_len].copy())


def _check_inputs(task: Task, shard: Shard, model: nn.Module, device: Device) -> None:
    actual = model_device(model)
    if not same_device(device, actual):
        raise TrainingError(
            f"the model is on {actual}, but training was asked to run on {device}; "
            f"move it first (model.to({str(device)!r})) or pass device={str(actual)!r}"
        )
    if (shard.shard_index, shard.n_shards) != (task.shard_index, task.n_shards):
        raise TrainingError(
            f"shard {shard.shard_index}/{shard.n_shards} is not the task's shard "
            f"{task.shard_index}/{task.n_shards}"
        )
    if task.hyper.seq_len > shard.dataset.chunk_len:
        raise TrainingError(
            f"task seq_len {task.hyper.seq_len} exceeds the dataset chunk length "
            f"{shard.dataset.chunk_len}"
        )
    if len(shard) == 0:
        raise TrainingError("the shard is empty")


@contextmanager
def borrowed_adapter(
    model: nn.Module, config: LoraConfig, state: Mapping[str, torch.Tensor]
) -> Iterator[dict[str, torch.Tensor]]:
    """Add the work adapter loaded with `state`; yields its trainable B weights by PEFT key."""
    from r3mes.model.errors import AdapterError
    from r3mes.model.lora import (
        PEFT_PREFIX,
        apply_lora,
        load_lora_state_dict,
        lora_layers,
        remove_adapter,
    )

    flags = {id(p): p.requires_grad for p in model.parameters()}
    apply_lora(model, config, name=WORK_ADAPTER)
    try:
        try:
            load_lora_state_dict(model, dict(state), WORK_ADAPTER)
        except AdapterError as exc:
            raise TrainingError(
                f"adapter state does not fit the task's LoRA config: {exc}"
            ) from exc
        for p in model.parameters():
            p.requires_grad_(False)
        params: dict[str, torch.Tensor] = {}
        for path, layer in lora_layers(model):
            if WORK_ADAPTER in layer.lora_A:
                lora_b = layer.lora_B[WORK_ADAPTER]
                assert isinstance(lora_b, nn.Linear)
                params[f"{PEFT_PREFIX}{path}.lora_B.weight"] = lora_b.weight
        for weight in params.values():
            weight.requires_grad_(True)
        yield dict(sorted(params.items()))
    finally:
        remove_adapter(model, WORK_ADAPTER)
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), p.requires_grad))


def next_token_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `batch` (B, T)."""
    logits = model(batch)  # (B, T, V)
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), batch[:, 1:].reshape(-1))


def _adam_step(
    state: TrainState,
    params: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    lr: float,
) -> TrainState:
    t = state.step + 1
    bc1, bc2 = 1.0 - ADAM_BETA1**t, 1.0 - ADAM_BETA2**t
    m_new, v_new, p_new = {}, {}, {}
    with torch.no_grad():
        for key, p in params.items():
            g = grads[key]
            m = state.exp_avg[key] * ADAM_BETA1 + g * (1.0 - ADAM_BETA1)
            v = state.exp_avg_sq[key] * ADAM_BETA2 + (g * g) * (1.0 - ADAM_BETA2)
            p.sub_(lr * (m / bc1) / ((v / bc2).sqrt() + ADAM_EPS))
            m_new[key], v_new[key], p_new[key] = m, v, p.detach().clone()
    return TrainState(t, p_new, m_new, v_new)


def run_steps(
    *,
    task: Task,
    model: nn.Module,
    shard: Shard,
    adapter_state: Mapping[str, torch.Tensor],
    start: TrainState,
    stop: int,
    checkpoint_every: int = 0,
    device: Device = "cpu",
) -> tuple[TrainState, list[str], dict[int, TrainState]]:
    """Train from `start` (B weights over `adapter_state`) up to step `stop` on `device`.

    Returns (final state, digests after each step, checkpoints), all on the CPU.
    """
    _check_inputs(task, shard, model, device)
    problem = train_state_problem(start)
    if problem:
        raise TrainingError(f"cannot train from this state: {problem}")
    unknown = sorted(set(start.params) - set(adapter_state))
    if unknown:
        raise TrainingError(f"training state holds keys the adapter lacks, e.g. {unknown[:2]}")
    full = {**adapter_state, **start.params}
    lr = task.hyper.lr_float
    digests: list[str] = []
    ckpts: dict[int, TrainState] = {}
    where = as_device(device)
    with executor_numerics(where), borrowed_adapter(model, task.lora_config(), full) as params:
        if set(params) != set(start.params):
            raise TrainingError("training state must hold exactly the adapter's B weights")
        state = _state_on(start, where)
        for step in range(start.step, stop):
            loss = next_token_loss(model, batch_for_step(task, shard, step).to(where))
            if not bool(torch.isfinite(loss)):
                raise TrainingError(f"loss became non-finite at step {step}; lower the lr")
            grads = torch.autograd.grad(loss, list(params.values()))
            state = _adam_step(state, params, dict(zip(params, grads, strict=True)), lr)
            digests.append(state.digest())
            if checkpoint_every and state.step % checkpoint_every == 0:
                ckpts[state.step] = _state_on(state, torch.device("cpu"))
        log.debug("task %s: steps %d..%d done on %s", task.task_id[:12], start.step, stop, where)
    return _state_on(state, torch.device("cpu")), digests, ckpts


def _state_on(state: TrainState, device: torch.device) -> TrainState:
    def move(tensors: Tensors) -> Tensors:
        return {k: v.to(device) for k, v in tensors.items()}

    return TrainState(state.step, move(state.params), move(state.exp_avg), move(state.exp_avg_sq))


def is_trainable_key(key: str) -> bool:
    """True for the LoRA weights that train (the B matrices)."""
    return key.endswith(".lora_B.weight")


def trained_layout(adapter_state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the tensors a training update holds (the adapter's B matrices)."""
    return {k: tuple(adapter_state[k].shape) for k in sorted(adapter_state) if is_trainable_key(k)}


def start_state(adapter_state: Mapping[str, torch.Tensor]) -> TrainState:
    """Step 0: the adapter's B weights and zero Adam moments."""
    keys = sorted(k for k in adapter_state if is_trainable_key(k))
    if not keys:
        raise TrainingError("the adapter state holds no lora_B weights to train")
    params = {k: adapter_state[k].detach().to("cpu", torch.float32).clone() for k in keys}
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    return TrainState(0, params, zeros, {k: v.clone() for k, v in zeros.items()})


def train_with_trace(
    *,
    task: Task,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    checkpoint_every: int = 0,
    device: Device = "cpu",
) -> TrainResult:
    """Run the whole task on `device`, keeping per-step digests (and checkpoints if asked)."""
    if adapter_state is None:
        adapter_state = initial_adapter_state(model, task)
    start = start_state(adapter_state)
    final, digests, ckpts = run_steps(
        task=task,
        model=model,
        shard=shard,
        adapter_state=adapter_state,
        start=start,
        stop=task.hyper.steps,
        checkpoint_every=checkpoint_every,
        device=device,
    )
    delta = {k: final.params[k] - start.params[k] for k in sorted(start.params)}
    return TrainResult(delta, final, (start.digest(), *digests), {0: start} | ckpts)


def train_update(
    *,
    task: Task,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    device: Device = "cpu",
) -> Tensors:
    """The raw LoRA delta (trained - start, float32, PEFT `lora_B` keys) of `task` on `shard`.

    `adapter_state` None means the genesis adapter (`initial_adapter_state`). `device` is where
    the model lives and the work runs ("cpu": class `cpu-fp32-det-v1`; anything else belongs to
    `current_executor_class(device)`). The delta is returned on the CPU.
    """
    return train_with_trace(
        task=task, model=model, adapter_state=adapter_state, shard=shard, device=device
    ).delta
