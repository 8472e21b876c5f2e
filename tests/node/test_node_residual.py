"""Error-feedback residual: atomic safetensors files, staged until commit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from r3mes.node.errors import ValidationError
from r3mes.node.miner.residual import ResidualStore, load_tensors, save_tensors_atomic


def test_stage_promote_discard(tmp_path: Path) -> None:
    store = ResidualStore(tmp_path)
    assert store.load() == {}
    store.stage("tx1", {"a": torch.arange(4.0)})
    assert store.load() == {}, "staged residual is not current before commit"
    assert store.promote("tx1")
    assert torch.equal(store.load()["a"], torch.arange(4.0))
    store.stage("tx2", {"a": torch.zeros(4)})
    store.discard("tx2")
    assert not store.has_staged("tx2")
    assert torch.equal(store.load()["a"], torch.arange(4.0)), "rollback keeps the old residual"
    assert not store.promote("tx2")
    store.reset()
    assert store.load() == {}


def test_rejects_bad_tensors_and_ids(tmp_path: Path) -> None:
    store = ResidualStore(tmp_path)
    with pytest.raises(ValidationError, match="NaN"):
        store.stage("tx", {"a": torch.tensor([float("nan")])})
    with pytest.raises(ValidationError, match="floating point"):
        store.stage("tx", {"a": torch.tensor([1])})
    with pytest.raises(ValidationError, match="invalid transaction id"):
        store.stage("../evil", {"a": torch.ones(1)})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    save_tensors_atomic(path, {"a": torch.ones(3)})
    assert torch.equal(load_tensors(path)["a"], torch.ones(3))
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValidationError, match="not a readable safetensors"):
        load_tensors(path)
