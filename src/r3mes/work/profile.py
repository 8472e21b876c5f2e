"""The network's work profile, and from a ledger round to the `Task` every role must agree
on byte for byte.

The chain records, per round, the seed (the previous block hash) and the base model,
dataset and adapter in force; the miner picks a shard. The remaining knobs (learning rate,
steps, LoRA shape, top-k ratio) form the network's `WorkProfile`, which miners,
validators and proposers must share: `r3mes up` writes one to `$R3MES_HOME/work.json`
and hands it to every role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r3mes.spec import shards as spec_shards
from r3mes.work.errors import TaskError
from r3mes.work.executor import CPU_DET_V1
from r3mes.work.task import HyperParams, Task

NO_ADAPTER = "genesis"
"""`Task.adapter_cid` of a round that has no adapter yet: train from the initial state."""
MAX_PROFILE_BYTES = 16 * 1024
DEFAULT_COMPRESSION: dict[str, Any] = {"value_format": "sign", "topk_ppm": 60_000}
"""Updates a network ships unless its profile says otherwise: one sign bit for each of 6 %
of the entries, positions picked by the round seed (update format v3, ~240 bytes per update
on the shipped model, 338x less than dense fp32; `docs/benchmarks.md`, Useful work)."""


@dataclass(frozen=True)
class WorkProfile:
    """Training knobs shared by every role of one network."""

    hyper: HyperParams = field(default_factory=lambda: HyperParams(**DEFAULT_COMPRESSION))
    """Learning rate, steps, batch, sequence length, LoRA shape, compression (by default the
    seeded sign format, `DEFAULT_COMPRESSION`)."""
    executor_class: str = CPU_DET_V1
    """The executor class tasks name (the reference CPU class by default)."""
    eval_chunks: int = 32
    """Held-out chunks used to score adapter versions."""
    settle_rounds: int = 2
    """Rounds after its own a submission has to be verified for its error-feedback
    residual to carry forward (`r3mes.node.miner.settlement`); miners and validators must agree."""

    def __post_init__(self) -> None:
        if isinstance(self.settle_rounds, bool) or not isinstance(self.settle_rounds, int):
            raise TaskError(f"settle_rounds must be an integer, got {self.settle_rounds!r}")
        if not 0 <= self.settle_rounds <= 1000:
            raise TaskError(f"settle_rounds must be in [0, 1000], got {self.settle_rounds}")
        if isinstance(self.eval_chunks, bool) or not isinstance(self.eval_chunks, int):
            raise TaskError(f"eval_chunks must be an integer, got {self.eval_chunks!r}")
        if not isinstance(self.executor_class, str) or not self.executor_class:
            raise TaskError("executor_class must be a non-empty string")
        if not 1 <= self.eval_chunks <= 100_000:
            raise TaskError(f"eval_chunks must be in [1, 100000], got {self.eval_chunks}")

    def to_dict(self) -> dict[str, Any]:
        h = self.hyper
        return {
            "hyper": {
                "lr": h.lr,
                "steps": h.steps,
                "batch_size": h.batch_size,
                "seq_len": h.seq_len,
                "rank": h.rank,
                "alpha": h.alpha,
                "target_modules": list(h.target_modules),
                "topk_ppm": h.topk_ppm,
                "value_format": h.value_format,
            },
            "executor_class": self.executor_class,
            "eval_chunks": self.eval_chunks,
            "settle_rounds": self.settle_rounds,
        }

    @classmethod
    def from_dict(cls, raw: object) -> WorkProfile:
        required = {"hyper", "executor_class", "eval_chunks"}
        if not isinstance(raw, dict) or not required <= set(raw) <= required | {"settle_rounds"}:
            raise TaskError(
                "work profile must be an object with keys hyper, executor_class, eval_chunks"
                " and optionally settle_rounds"
            )
        hyper = raw["hyper"]
        if not isinstance(hyper, dict):
            raise TaskError("work profile 'hyper' must be an object")
        try:
            params = HyperParams(
                **{**hyper, "target_modules": tuple(hyper.get("target_modules", ()))}
            )
        except (TaskError, TypeError) as exc:
            raise TaskError(f"work profile 'hyper' is invalid: {exc}") from exc
        return cls(
            hyper=params,
            executor_class=str(raw["executor_class"]),
            eval_chunks=raw["eval_chunks"],
            settle_rounds=raw.get("settle_rounds", 2),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), sort_keys=True, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> WorkProfile:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TaskError(f"cannot read work profile {path}: {exc}") from exc
        if len(raw) > MAX_PROFILE_BYTES:
            raise TaskError(f"work profile {path} is over {MAX_PROFILE_BYTES} bytes")
        try:
            return cls.from_dict(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise TaskError(f"work profile {path} is not JSON: {exc}") from exc


def round_seed(seed_hex: str) -> int:
    """The round's 64-bit task seed (the rule lives in `r3mes.spec.shards.round_seed`)."""
    try:
        return spec_shards.round_seed(seed_hex)
    except spec_shards.RuleInputError as exc:
        raise TaskError(str(exc)) from exc


def derive_task(
    *,
    round_number: int,
    seed_hex: str,
    miner: str,
    shard: int,
    n_shards: int,
    base_model_cid: str,
    dataset_cid: str,
    adapter_cid: str,
    profile: WorkProfile,
) -> Task:
    """The task of `miner` on `shard` in a round; identical on every node."""
    try:
        return Task(
            round=round_number,
            seed=round_seed(seed_hex),
            miner=miner,
            base_model_cid=base_model_cid,
            adapter_cid=adapter_cid or NO_ADAPTER,
            dataset_cid=dataset_cid,
            shard_index=shard,
            n_shards=n_shards,
            hyper=profile.hyper,
            executor_class=profile.executor_class,
        )
    except TaskError as exc:
        raise TaskError(f"round {round_number} does not give a valid task: {exc}") from exc
