import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r3mes.model.bitlinear import (
    MAX_EXACT_IN_FEATURES,
    BitLinear,
    pack_ternary,
    quantize_activations,
    ternarize,
    unpack_ternary,
)
from r3mes.model.errors import ModelError
from r3mes.model.kernels import ternary as kernels

torch.set_num_threads(1)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 13), cols=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(rows: int, cols: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-1, 2, (rows, cols), generator=g).float()
    packed = pack_ternary(t)
    assert packed.dtype == torch.uint8
    assert packed.shape == ((rows + 3) // 4, cols)
    assert torch.equal(unpack_ternary(packed, t.shape), t)


def test_pack_matches_transformers_layout() -> None:
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    t = torch.randint(-1, 2, (16, 6), generator=torch.Generator().manual_seed(1)).float()
    assert torch.equal(pack_ternary(t), bitnet.pack_weights(t.clone()))
    # The docstring example of transformers' unpack_weights.
    packed = torch.tensor([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], dtype=torch.uint8)
    expected = torch.tensor(
        [[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]]
    ).float()
    assert torch.equal(unpack_ternary(packed, (8, 2)), expected)


def test_pack_rejects_non_ternary_and_unpack_rejects_bad_shapes() -> None:
    with pytest.raises(ModelError, match="-1, 0, 1"):
        pack_ternary(torch.tensor([[2.0]]))
    with pytest.raises(ModelError, match="cannot hold"):
        unpack_ternary(torch.zeros(2, 3, dtype=torch.uint8), (4, 3))
    with pytest.raises(ModelError, match="uint8"):
        unpack_ternary(torch.zeros(1, 3, dtype=torch.int8), (4, 3))
    with pytest.raises(ModelError, match="code 3"):
        unpack_ternary(torch.full((1, 1), 255, dtype=torch.uint8), (4, 1))


def test_ternarize_is_absmean_roundclip() -> None:
    w = torch.tensor([[0.1, -0.5, 0.02, 2.0]])
    ternary, scale = ternarize(w)
    mean = w.abs().mean()
    assert torch.allclose(scale, 1 / mean)
    assert torch.equal(ternary, (w / mean).round().clamp(-1, 1))


def test_training_mode_uses_straight_through_gradients() -> None:
    layer = BitLinear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight is not None and layer.weight.grad is not None
    # STE: d/dW of sum(x_q @ W_q^T) is the column sums of the quantized input.
    assert torch.count_nonzero(layer.weight.grad) > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_freeze_packs_and_matches_training_forward() -> None:
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    x = torch.randn(2, 5, 16)
    before = layer(x).detach()
    layer.freeze()
    assert layer.frozen and layer.weight is None
    names = dict(layer.named_buffers())
    assert names["packed_weight"].dtype == torch.uint8
    assert names["packed_weight"].shape == (2, 16)
    assert list(layer.parameters()) == []
    assert torch.allclose(layer(x), before, atol=1e-5)
    assert layer.weight_bytes() == 2 * 16 + 4


def test_cached_unpacked_copy_is_accounted(reference_path: None) -> None:
    layer = BitLinear(16, 8)
    layer.freeze()
    layer.cache_unpacked(True)
    x = torch.randn(1, 16)
    out = layer(x)
    assert layer.weight_bytes() == 2 * 16 + 4 + 8 * 16 * 4
    layer.cache_unpacked(False)
    assert torch.equal(layer(x), out)
    assert layer.weight_bytes() == 2 * 16 + 4


def test_load_packed_rejects_wrong_shape() -> None:
    layer = BitLinear(16, 8)
    with pytest.raises(ModelError, match="shape"):
        layer.load_packed(torch.zeros(3, 16, dtype=torch.uint8), torch.ones(1))
    assert not layer.frozen


def test_kernel_path_holds_no_unpacked_copy() -> None:
    layer = BitLinear(16, 8)
    layer.freeze()
    layer.cache_unpacked(True)
    layer(torch.randn(1, 16))
    if kernels.current_isa() != kernels.REFERENCE:
        assert layer.weight_bytes() == 2 * 16 + 4  # the kernel reads the packed bytes


def test_frozen_forward_is_transformers_post_quant_process() -> None:
    torch.manual_seed(3)
    layer = BitLinear(40, 9)
    layer.freeze()
    x = torch.randn(3, 40)
    codes, input_scale = quantize_activations(x)
    acc = codes @ layer.ternary_weight().T  # integer valued, exact in float32
    expected = acc / (input_scale * layer.scale())
    assert torch.equal(layer(x), expected)


def test_too_wide_for_exact_float_sums_is_refused() -> None:
    with pytest.raises(ModelError, match="exact"):
        BitLinear(MAX_EXACT_IN_FEATURES + 1, 4)
