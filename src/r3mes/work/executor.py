"""Executor classes: which hardware/numerics produced a result, declared honestly.

`cpu-fp32-det-v1` is the reference class: float32 on CPU, `torch.use_deterministic_algorithms`,
one thread for every reduction (`torch.set_num_threads(1)` while working, restored after), no
TF32, every random choice drawn from a `torch.Generator` seeded by the task. Two runs of the
same task in this class give the same bytes, in any process, whatever the caller's thread
count. Other hardware must not claim it: `current_executor_class()` reports what the running
process would produce, e.g. `cuda-8.0-nondet-v1` on an A100.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

CPU_DET_V1 = "cpu-fp32-det-v1"


def current_executor_class(device: str = "cpu") -> str:
    """The executor class for work run on `device` ("cpu", "cuda", "mps") in this process."""
    if device == "cpu":
        return CPU_DET_V1
    if device == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"cuda-{major}.{minor}-nondet-v1"
    return f"{device}-nondet-v1"


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
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
