import pytest

from r3mes.model.device import (
    GIB,
    default_profile,
    detect_device,
    memory_profile,
    resolve_device,
)
from r3mes.model.errors import ModelError


@pytest.mark.parametrize(
    ("gib", "name", "rank", "batch"),
    [
        (2, "ultra_low", 4, 1),
        (4, "low", 8, 2),
        (12, "medium", 16, 4),
        (24, "high", 32, 8),
        (32, "high", 32, 8),  # ultra_high is "> 32 GB"
        (33, "ultra_high", 64, 16),
        (80, "ultra_high", 64, 16),
    ],
)
def test_seed_profiles(gib: float, name: str, rank: int, batch: int) -> None:
    profile = memory_profile(int(gib * GIB))
    assert (profile.name, profile.lora_rank, profile.batch_size) == (name, rank, batch)


def test_boundaries_and_errors() -> None:
    assert memory_profile(4 * GIB - 1).name == "ultra_low"
    assert memory_profile(32 * GIB).name == "high"
    assert memory_profile(32 * GIB + 1).name == "ultra_high"
    with pytest.raises(ModelError):
        memory_profile(0)
    with pytest.raises(ModelError):
        default_profile("tpu")


def test_detect_and_default_on_this_machine() -> None:
    device = detect_device()
    assert device in ("cuda", "mps", "cpu")
    assert default_profile(device).lora_rank in (4, 8, 16, 32, 64)


def test_resolve_device_choices() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == detect_device()
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(ModelError, match="no usable CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ModelError, match="choose one of auto, cpu, cuda"):
        resolve_device("tpu")
