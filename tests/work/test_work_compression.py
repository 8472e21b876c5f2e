from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r3mes.work.compression import (
    compress,
    compress_tensor,
    compress_with_feedback,
    decompress,
    topk_count,
)
from r3mes.work.errors import CompressionError


def test_topk_keeps_largest_magnitudes_with_index_tiebreak() -> None:
    t = torch.tensor([0.5, -2.0, 1.0, -1.0, 1.0, 0.1])
    sp = compress_tensor(t, topk_ppm=500_000, value_format="fp16")  # k = 3
    assert sp.indices.tolist() == [1, 2, 3]  # |-2| then ties at 1.0 broken by lower index
    assert sp.dense().tolist() == [0.0, -2.0, 1.0, -1.0, 0.0, 0.0]
    assert sp.values.dtype == torch.float16 and sp.indices.dtype == torch.int32


def test_topk_count_rules() -> None:
    assert topk_count(1000, 10_000) == 10
    assert topk_count(10, 1) == 1  # at least one entry survives
    assert topk_count(10, 1_000_000) == 10
    with pytest.raises(CompressionError):
        topk_count(10, 0)


def test_int8_quantization_is_close_and_scaled() -> None:
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(64, 32, generator=gen)
    sp = compress_tensor(t, topk_ppm=1_000_000, value_format="int8")
    assert sp.values.dtype == torch.int8 and sp.scale is not None
    assert float(sp.scale) == pytest.approx(float(t.abs().max()) / 127)
    assert torch.allclose(sp.dense(), t, atol=float(sp.scale) / 2 + 1e-7)


def test_error_feedback_conserves_the_update_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    raw = {"a": torch.randn(8, 16, generator=gen), "b": torch.randn(16, 8, generator=gen)}
    residual = {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in raw.items()}
    sparse, nxt = compress_with_feedback(raw, residual, topk_ppm=50_000, value_format="fp16")
    dense = decompress(sparse)
    for k in raw:
        assert torch.equal(dense[k] + nxt[k], raw[k] + residual[k])


def test_error_feedback_eventually_ships_everything() -> None:
    raw = {"w": torch.linspace(0.5, 1, 100).reshape(10, 10)}
    shipped = torch.zeros(10, 10)
    residual: dict[str, torch.Tensor] | None = None
    for _ in range(40):
        sparse, residual = compress_with_feedback(
            raw, residual, topk_ppm=100_000, value_format="fp16"
        )
        shipped += decompress(sparse)["w"]
    # without feedback 40 rounds would ship only the same 10 entries 40 times
    assert residual is not None
    assert torch.allclose(shipped + residual["w"], raw["w"] * 40, atol=1e-3)
    assert int((shipped != 0).sum()) == 100


def test_compression_rejects_bad_input() -> None:
    with pytest.raises(CompressionError):
        compress_tensor(torch.tensor([1.0, float("nan")]), topk_ppm=1, value_format="fp16")
    with pytest.raises(CompressionError, match="fp16"):
        compress_tensor(torch.tensor([1e6]), topk_ppm=1_000_000, value_format="fp16")
    with pytest.raises(CompressionError):
        compress_tensor(torch.ones(3), topk_ppm=1, value_format="fp8")
    with pytest.raises(CompressionError, match="residual"):
        compress_with_feedback(
            {"a": torch.ones(2)}, {"b": torch.ones(2)}, topk_ppm=1, value_format="fp16"
        )


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.integers(-4, 4), min_size=1, max_size=64),
    ppm=st.integers(1, 1_000_000),
)
def test_compression_is_deterministic_and_keeps_largest(values: list[int], ppm: int) -> None:
    t = torch.tensor(values, dtype=torch.float32)
    a = compress({"t": t}, topk_ppm=ppm, value_format="fp16")["t"]
    b = compress({"t": t.clone()}, topk_ppm=ppm, value_format="fp16")["t"]
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    kept = set(a.indices.tolist())
    dropped = [abs(v) for i, v in enumerate(values) if i not in kept]
    assert len(kept) == topk_count(len(values), ppm)
    assert not dropped or max(dropped) <= min(abs(values[i]) for i in kept)
