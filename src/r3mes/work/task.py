"""A unit of useful work: one miner's training task for one round.

The chain derives a `Task` for each (round, miner); the miner trains it, validators re-execute
it and the proposer aggregates its result. Everybody must agree on the task byte for byte, so a
task has exactly one canonical encoding (`encode_task`) and its identity is the SHA-256 of those
bytes (`task_id`).

Canonical encoding (version 1): JSON with sorted keys, no whitespace, ASCII only, integers and
strings only -- no floats anywhere. The learning rate is a canonical decimal string ("0.002",
never "0.0020" or "2e-3"); the top-k ratio is an integer in parts per million. `decode_task`
accepts only bytes that re-encode to themselves.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from r3mes.work.boundedjson import parse_json
from r3mes.work.errors import TaskError

if TYPE_CHECKING:
    from r3mes.model.lora import LoraConfig

TASK_VERSION = 1
MAX_TASK_BYTES = 4096
PPM = 1_000_000
LORA_TARGETS = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
VALUE_FORMATS = ("fp16", "int8", "sign")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,8})(\.[0-9]{0,17}[1-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9._:/+-]{1,128}$")
_CANONICAL_UINT = re.compile(r"0|[1-9][0-9]*")
"""A canonical unsigned decimal (ASCII digits only: `str.isdigit` also accepts "\u00b9")."""
MAX_TASK_DEPTH = 3
"""Task JSON nests three levels (task -> hyper -> target_modules); deeper is rejected."""
_U64 = 2**64


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    # bool is an int subclass; a JSON `true` must never pass as 1.
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise TaskError(f"task field {name!r} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_name(name: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise TaskError(
            f"task field {name!r} must be 1-128 characters of [A-Za-z0-9._:/+-], got {value!r}"
        )


@dataclass(frozen=True)
class HyperParams:
    """Training and compression hyper-parameters of a task (all exact, no floats)."""

    lr: str = "0.002"
    """Learning rate as a canonical decimal string (no exponent, no trailing zeros)."""
    steps: int = 8
    """Optimizer steps to run."""
    batch_size: int = 4
    """Sequences per step."""
    seq_len: int = 64
    """Tokens per sequence; must not exceed the dataset's chunk length."""
    rank: int = 4
    """LoRA rank r."""
    alpha: int = 8
    """LoRA alpha (scaling = alpha / r)."""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """LoRA target modules (HF names), sorted, no duplicates."""
    topk_ppm: int = 10_000
    """Fraction of update entries kept, in parts per million (10_000 = 1 %): by top-k for
    "fp16" and "int8", from the round seed's random index set for "sign"."""
    value_format: str = "fp16"
    """Encoding of kept values: "fp16", "int8" with one fp32 scale per tensor (both top-k,
    update format v2), or "sign": one bit per entry of the round-seeded index set with one
    fp16 scale per tensor (update format v3, no indices; `r3mes.work.compression`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.lr, str) or not _DECIMAL.fullmatch(self.lr):
            raise TaskError(f"lr must be a canonical decimal string like '0.002', got {self.lr!r}")
        if not Decimal(0) < Decimal(self.lr) <= Decimal(10):
            raise TaskError(f"lr must be in (0, 10], got {self.lr}")
        _check_int("steps", self.steps, 1, 100_000)
        _check_int("batch_size", self.batch_size, 1, 4096)
        _check_int("seq_len", self.seq_len, 2, 65_536)
        _check_int("rank", self.rank, 1, 1024)
        _check_int("alpha", self.alpha, 1, 65_536)
        _check_int("topk_ppm", self.topk_ppm, 1, PPM)
        targets = self.target_modules
        if (
            not isinstance(targets, tuple)
            or not all(isinstance(t, str) for t in targets)
            or not targets
            or list(targets) != sorted(set(targets))
            or not set(targets) <= LORA_TARGETS
        ):
            raise TaskError(
                f"target_modules must be a sorted tuple of distinct names from "
                f"{sorted(LORA_TARGETS)}, got {targets!r}"
            )
        if self.value_format not in VALUE_FORMATS:
            raise TaskError(
                f"value_format must be one of {VALUE_FORMATS}, got {self.value_format!r}"
            )

    @property
    def lr_float(self) -> float:
        """The learning rate as a float (exactly `float(Decimal(lr))`, the same everywhere)."""
        return float(Decimal(self.lr))

    @property
    def topk_ratio(self) -> float:
        return self.topk_ppm / PPM


@dataclass(frozen=True)
class Task:
    """One miner's training task in one round."""

    round: int
    """Round number."""
    seed: int
    """Round seed (unsigned 64-bit), shared by all miners of the round; seeds LoRA init."""
    miner: str
    """Address of the miner the task is for; enters the task id and so the batch order."""
    base_model_cid: str
    """CID of the frozen base model."""
    adapter_cid: str
    """CID of the adapter version being improved."""
    dataset_cid: str
    """CID of the token dataset file."""
    shard_index: int
    """Which shard of the dataset's training split (see `r3mes.work.data`)."""
    n_shards: int
    """How many shards the training split is cut into this round."""
    hyper: HyperParams
    """Training and compression hyper-parameters."""
    executor_class: str
    """Executor class the result is expected from (e.g. "cpu-fp32-det-v1")."""

    def __post_init__(self) -> None:
        _check_int("round", self.round, 0, 2**63 - 1)
        _check_int("seed", self.seed, 0, _U64 - 1)
        for name in ("miner", "base_model_cid", "adapter_cid", "dataset_cid", "executor_class"):
            _check_name(name, getattr(self, name))
        _check_int("n_shards", self.n_shards, 1, 1_000_000)
        _check_int("shard_index", self.shard_index, 0, self.n_shards - 1)
        if not isinstance(self.hyper, HyperParams):
            raise TaskError("task field 'hyper' must be a HyperParams")

    @property
    def task_id(self) -> str:
        """SHA-256 (hex) of the canonical encoding: the task's identity."""
        return hashlib.sha256(encode_task(self)).hexdigest()

    def derived_seed(self, purpose: str) -> int:
        """A 64-bit seed for one use (`purpose`), unique to this task."""
        digest = hashlib.sha256(f"{self.task_id}/{purpose}".encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def lora_config(self) -> LoraConfig:
        """The `r3mes.model.lora.LoraConfig` this task trains."""
        from r3mes.model.lora import LoraConfig

        h = self.hyper
        return LoraConfig(r=h.rank, alpha=h.alpha, target_modules=h.target_modules)


def _task_to_obj(task: Task) -> dict[str, Any]:
    h = task.hyper
    return {
        "v": TASK_VERSION,
        "round": task.round,
        "seed": str(task.seed),  # 64-bit: a string keeps every JSON reader exact
        "miner": task.miner,
        "base_model_cid": task.base_model_cid,
        "adapter_cid": task.adapter_cid,
        "dataset_cid": task.dataset_cid,
        "shard_index": task.shard_index,
        "n_shards": task.n_shards,
        "executor_class": task.executor_class,
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
    }


def canonical_json(obj: object) -> bytes:
    """The canonical JSON bytes of `obj`: sorted keys, no whitespace, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_task(task: Task) -> bytes:
    """The canonical bytes of `task` (version 1)."""
    return canonical_json(_task_to_obj(task))


def _reject_float(text: str) -> float:
    raise TaskError(f"task encoding must not contain floats, found {text!r}")


def _expect_keys(obj: object, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != keys:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise TaskError(f"{where} must have exactly the keys {sorted(keys)}, got {got}")
    return obj


def decode_task(data: bytes) -> Task:
    """Strictly decode canonical task bytes; anything else raises `TaskError`."""
    if not isinstance(data, bytes | bytearray):
        raise TaskError("task encoding must be bytes")
    if len(data) > MAX_TASK_BYTES:
        raise TaskError(f"task encoding is {len(data)} bytes, the limit is {MAX_TASK_BYTES}")
    try:
        text = bytes(data).decode("ascii")
    except UnicodeDecodeError as exc:
        raise TaskError(f"task encoding is not ASCII: {exc}") from exc
    obj = parse_json(
        text,
        max_depth=MAX_TASK_DEPTH,
        error=TaskError,
        what="task encoding",
        parse_float=_reject_float,
    )
    top = _expect_keys(obj, set(_task_to_obj_keys()), "task")
    if top["v"] != TASK_VERSION:
        raise TaskError(f"unsupported task version {top['v']!r}; this node speaks {TASK_VERSION}")
    hyper = _expect_keys(top["hyper"], set(_HYPER_KEYS), "task 'hyper'")
    seed = top["seed"]
    if not isinstance(seed, str) or not _CANONICAL_UINT.fullmatch(seed):
        raise TaskError(f"task seed must be a canonical decimal string, got {seed!r}")
    targets = hyper["target_modules"]
    if not isinstance(targets, list):
        raise TaskError("task hyper.target_modules must be a list")
    task = Task(
        round=top["round"],
        seed=int(seed),
        miner=top["miner"],
        base_model_cid=top["base_model_cid"],
        adapter_cid=top["adapter_cid"],
        dataset_cid=top["dataset_cid"],
        shard_index=top["shard_index"],
        n_shards=top["n_shards"],
        executor_class=top["executor_class"],
        hyper=HyperParams(**{**hyper, "target_modules": tuple(targets)}),
    )
    if encode_task(task) != bytes(data):
        raise TaskError("task encoding is not canonical (key order, spacing or escapes differ)")
    return task


_HYPER_KEYS = (
    "lr",
    "steps",
    "batch_size",
    "seq_len",
    "rank",
    "alpha",
    "target_modules",
    "topk_ppm",
    "value_format",
)


def _task_to_obj_keys() -> tuple[str, ...]:
    return (
        "v",
        "round",
        "seed",
        "miner",
        "base_model_cid",
        "adapter_cid",
        "dataset_cid",
        "shard_index",
        "n_shards",
        "executor_class",
        "hyper",
    )
