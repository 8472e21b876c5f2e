"""Adapter versions: the state a round trains from, the next version merged from a round's
updates, and the bundle (PEFT folder plus provenance) a version is stored as.

Also `random_update`, the fault-injection stand-in for honest work that only re-execution
can tell apart. No sockets here: the roles fetch inputs and ship outputs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from r3mes.work.errors import AggregationError
from r3mes.work.profile import NO_ADAPTER
from r3mes.work.submission import Submission
from r3mes.work.task import Task

Tensors = dict[str, torch.Tensor]
ADAPTER_INFO_FILE = "r3mes-adapter.json"
GENESIS_ADAPTER_SEED = 0


def start_adapter(task: Task, loaded: Tensors | None, model: nn.Module) -> Tensors:
    """The adapter state the task trains from: the loaded version, or (no version yet) the
    genesis state seeded by the task."""
    from r3mes.work.training import initial_adapter_state

    if task.adapter_cid == NO_ADAPTER or loaded is None:
        return initial_adapter_state(model, task)
    return loaded


def random_update(*, task: Task, adapter_state: Tensors, seed: int) -> Submission:
    """FAULT INJECTION (tests and demos only): a well-formed update of random numbers.

    It has the honest layout and names the miner's own task, so only re-execution can tell
    it apart - which is what the `--cheat random` flag exists to demonstrate.
    """
    from r3mes.work.executor import CPU_DET_V1
    from r3mes.work.submission import encode_for_task

    gen = torch.Generator().manual_seed(seed)
    raw = {
        k: torch.randn(v.shape, generator=gen, dtype=torch.float32) * 0.01
        for k, v in sorted(adapter_state.items())
        if k.endswith(".lora_B.weight")  # the trained matrices: the honest update's layout
    }
    return encode_for_task(task=task, raw=raw, residual=None, executor_class=CPU_DET_V1)


def merge_updates(adapter_state: Tensors, updates: Sequence[bytes]) -> Tensors:
    """Proposer: the next adapter state, `adapter_state` plus the mean of `updates`."""
    from r3mes.work.aggregate import aggregate
    from r3mes.work.encoding import decode_update
    from r3mes.work.errors import WorkError
    from r3mes.work.training import trained_layout

    layout = trained_layout(adapter_state)
    try:
        decoded = [(decode_update(data, layout=layout), 1) for data in updates]
        return aggregate(adapter_state, decoded)
    except WorkError as exc:
        raise AggregationError(f"cannot merge the round's updates: {exc}") from exc


@dataclass(frozen=True)
class AdapterInfo:
    """Provenance stored beside the PEFT files of an adapter version."""

    version: int
    parent_version: int
    round: int
    base_model_cid: str
    submission_ids: tuple[int, ...]
    update_digests: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "parent_version": self.parent_version,
                "round": self.round,
                "base_model_cid": self.base_model_cid,
                "submission_ids": list(self.submission_ids),
                "update_digests": sorted(self.update_digests),
            },
            sort_keys=True,
            indent=2,
        )


def package_adapter(
    state: Tensors, *, lora_r: int, lora_alpha: int, targets: tuple[str, ...], info: AdapterInfo
) -> bytes:
    """A deterministic bundle of a PEFT folder (+ provenance) for `state`."""
    from r3mes.model.lora import LoraConfig
    from r3mes.model.peft_io import save_peft_adapter
    from r3mes.registry.bundle import pack_dir

    for name, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise AggregationError(f"merged adapter tensor {name!r} is not finite")
    config = LoraConfig(r=lora_r, alpha=lora_alpha, target_modules=targets)
    folder = Path(tempfile.mkdtemp(prefix="r3mes-adapter-"))
    try:
        save_peft_adapter(folder, dict(state), config, info.base_model_cid)
        (folder / ADAPTER_INFO_FILE).write_text(info.to_json() + "\n")
        return pack_dir(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
