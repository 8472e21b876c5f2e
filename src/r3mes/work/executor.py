"""Executor classes: which hardware/numerics produced a result, declared honestly.

`cpu-fp32-det-v1` is the reference class: float32 on CPU, `torch.use_deterministic_algorithms`,
one thread for every reduction (`torch.set_num_threads(1)` while working, restored after), no
TF32, every random choice drawn from a `torch.Generator` seeded by the task. Two runs of the
same task in this class give the same bytes, in any process, whatever the caller's thread
count. Other hardware must not claim it: `current_executor_class(device)` reports what work on
`device` in the running process produces, e.g. `cuda-8.0-nondet-v1` on an A100 and
`mps-nondet-v1` on Apple silicon. Work on those devices runs under `executor_numerics`: fp32
matmuls (TF32 off, so results stay close to the CPU reference) but no determinism promise, so
validators judge it by distance, not by digest (`r3mes.work.verify`).

A class name ending in ``-det-vN`` promises bit-identical results (`is_deterministic_class`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from r3mes.work.errors import TrainingError

CPU_DET_V1 = "cpu-fp32-det-v1"
Device = str | torch.device


def as_device(device: object) -> torch.device:
    """`device` ("cpu", "cuda", "cuda:1", "mps" or a `torch.device`) as a `torch.device`."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TrainingError(f"device must be a string like 'cpu' or 'cuda', got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise TrainingError(f"unknown device {device!r}; use cpu, cuda or mps") from exc


def model_device(model: nn.Module) -> torch.device:
    """The one device all of `model`'s parameters live on."""
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise TrainingError(
            f"the model's parameters are on {sorted(map(str, devices)) or 'no device'}; "
            "work needs a model on exactly one device"
        )
    return devices.pop()


def same_device(requested: Device, actual: torch.device) -> bool:
    """True when `actual` is `requested` ("cuda" without an index matches any cuda device)."""
    want = as_device(requested)
    return want.type == actual.type and want.index in (None, actual.index)


def current_executor_class(device: Device = "cpu") -> str:
    """The executor class of work run on `device` in this process."""
    kind = as_device(device)
    if kind.type == "cpu":
        return CPU_DET_V1
    if kind.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(kind)
        return f"cuda-{major}.{minor}-nondet-v1"
    return f"{kind.type}-nondet-v1"


def is_deterministic_class(executor_class: str) -> bool:
    """True for classes that promise bit-identical results ("...-det-vN")."""
    parts = executor_class.split("-")
    return len(parts) >= 2 and parts[-2] == "det"


def _set_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    """`torch.use_deterministic_algorithms`, without importing torch's compiler stack for it.

    torch's function also sets `torch._inductor.config.deterministic`, and importing that
    config imports `torch._dynamo` and triton: ~115 MiB resident and a second of start-up in
    every miner and validator, which never compile.  Where inductor is already loaded, its flag
    is kept in step as torch does.
    """
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


@contextmanager
def deterministic_cpu() -> Iterator[None]:
    """Run the body under `cpu-fp32-det-v1` numerics; the caller's settings are restored."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.set_num_threads(1)
        _set_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_num_threads(threads)
        _set_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


@contextmanager
def executor_numerics(device: Device) -> Iterator[None]:
    """The numerics of `current_executor_class(device)` for the body.

    CPU: `deterministic_cpu()`. Other devices: TF32 off (fp32 matmuls and convolutions),
    nothing more; the caller's settings are restored.
    """
    if as_device(device).type == "cpu":
        with deterministic_cpu():
            yield
        return
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
