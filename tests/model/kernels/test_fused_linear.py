"""The fused native linear (`r3mes::ternary_linear`): the bits of the torch ops it replaces.

The reference here is BitLinear's frozen forward as it was before the fusion: the activation
quantization in torch (`quantize_activations`), the int8 kernel, and the rescale in torch.
Every comparison is on the output's bits (NaN payloads included), on every kernel path this
CPU runs and at 1, 2, 3 and 7 threads.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch._library.custom_ops import CustomOpDef

from r3mes.model import bitlinear
from r3mes.model.bitlinear import BitLinear, quantize_activations
from r3mes.model.errors import ModelError
from r3mes.model.generate import GenerationConfig, generate_token_ids
from r3mes.model.kernels import library
from r3mes.model.kernels import ternary as kernels
from r3mes.model.shipped import load_shipped_model

THREADS = (1, 2, 3, 7)
# (M, K, N): K off the 8/32/64 vector widths and the 32768-value quantization unit, N not a
# multiple of 4; M = 64 at K = 2560 and M = 200 at K = 300 quantize rows on several threads
SHAPES = [
    (1, 64, 4),
    (1, 777, 13),
    (1, 2560, 70),
    (3, 31, 5),
    (64, 100, 7),
    (64, 2560, 70),
    (200, 300, 9),
]


@pytest.fixture
def threads_restored() -> Iterator[None]:
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)
        kernels.set_isa(None)


def _layer(k: int, n: int, seed: int) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(k, n)
    layer.freeze()
    return layer


def _unfused(
    x: torch.Tensor, layer: BitLinear, *, isa: str | None = None, threads: int | None = None
) -> torch.Tensor:
    """BitLinear's frozen kernel forward before the fusion, op for op."""
    codes, input_scale = quantize_activations(x)
    flat = codes.reshape(-1, layer.in_features).to(torch.int8)
    packed = layer.get_buffer("packed_weight")
    acc = kernels.matmul_int8(flat, packed, layer.out_features, isa=isa, threads=threads)
    acc = acc.view(*x.shape[:-1], layer.out_features).float()
    return (acc / (input_scale * layer.get_buffer("weight_scale"))).to(x.dtype)


def _fused(x: torch.Tensor, layer: BitLinear, isa: str, threads: int) -> torch.Tensor:
    packed, scale = layer.get_buffer("packed_weight"), layer.get_buffer("weight_scale")
    return kernels.linear_float(x, packed, scale, layer.out_features, isa=isa, threads=threads)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _activations(m: int, k: int, seed: int) -> torch.Tensor:
    """Rows at scales from 1e-30 to 1e30, with the awkward rows and values mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.logspace(-30, 30, m).unsqueeze(1)
    specials = torch.tensor([0.5, -0.5, 1.5, -2.5, 126.5, -0.0, 3e38, -3e38, 1e-45, 127.0])
    x[0, : min(k, len(specials))] = specials[:k]
    if m > 1:
        x[1] = 0.0  # an all-zero row: amax clamps to 1e-5
    if m > 2:
        x[2] = torch.randn(k, generator=g) * 1e-40  # subnormals only
    if m > 3:
        x[3] = torch.randint(-127, 128, (k,), generator=g).float()  # amax 127: ties at .5
        x[3, 0] = 127.0
        x[3, 1:k:2] += 0.5
    return x


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_fused_linear_has_the_bits_of_the_torch_ops(
    isas: list[str], m: int, k: int, n: int
) -> None:
    layer = _layer(k, n, seed=m + k + n)
    x = _activations(m, k, seed=m * k)
    expected = _bits(_unfused(x, layer, isa="scalar", threads=1))
    assert torch.isfinite(_unfused(x, layer)).all()
    for isa in isas:
        for threads in THREADS:
            out = _fused(x, layer, isa, threads)
            assert out.dtype == torch.float32 and out.shape == (m, n)
            assert torch.equal(_bits(out), expected), (isa, threads)


def test_fused_linear_equals_the_float_matmul_reference(isas: list[str]) -> None:
    layer = _layer(96, 21, seed=1)
    x = torch.randn(2, 5, 96)
    kernels.set_isa(kernels.REFERENCE)
    try:
        reference = layer(x)  # unpacked ternary, F.linear on float codes
    finally:
        kernels.set_isa(None)
    for isa in isas:
        assert torch.equal(_bits(_fused(x, layer, isa, 2)), _bits(reference)), isa


def test_inf_and_nan_rows_are_what_the_torch_ops_give(isas: list[str]) -> None:
    """A NaN in a row makes its scale NaN; an inf makes it 0 (so 0 / 0): the whole row is
    NaN, with the same bits as before; the other rows are untouched."""
    layer = _layer(100, 9, seed=2)
    x = torch.randn(7, 100, generator=torch.Generator().manual_seed(3))
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    x[2, 7] = -float("inf")
    x[3, 1], x[3, 2] = float("nan"), float("inf")
    x[4, :] = float("inf")
    x[5, 0] = 3.4e38  # finite, the largest magnitudes
    expected = _unfused(x, layer, isa="scalar", threads=1)
    assert torch.isnan(expected[:5]).all() and torch.isfinite(expected[5:]).all()
    for isa in isas:
        for threads in THREADS:
            out = _fused(x, layer, isa, threads)
            assert torch.equal(_bits(out), _bits(expected)), (isa, threads)


def test_leading_dims_and_strided_input(isas: list[str]) -> None:
    layer = _layer(130, 11, seed=4)
    x = torch.randn(2, 3, 4, 130)
    out = _fused(x, layer, isas[-1], 3)
    assert out.shape == (2, 3, 4, 11)
    assert torch.equal(_bits(out), _bits(_unfused(x, layer)))
    wide = torch.randn(5, 260)[:, ::2]  # last dim strided: copied to contiguous first
    assert torch.equal(_bits(_fused(wide, layer, isas[-1], 2)), _bits(_unfused(wide, layer)))
    empty = _fused(torch.randn(0, 130), layer, isas[-1], 2)
    assert empty.shape == (0, 11)


def test_bitlinear_uses_the_fused_op_with_and_without_grad(
    isas: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _layer(96, 21, seed=5)
    x = torch.randn(4, 96)
    calls: list[int] = []
    real = kernels.linear_float

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kernels, "linear_float", counting)
    with torch.no_grad():
        y = layer(x)
    assert calls == [1]
    xg = x.clone().requires_grad_(True)
    yg = layer(xg)
    assert calls == [1, 1] and yg.requires_grad
    assert torch.equal(_bits(y), _bits(_unfused(x, layer)))
    assert torch.equal(_bits(yg.detach()), _bits(y))
    # bfloat16 activations: quantized from their float32 value, output cast back, as before
    xb = x.to(torch.bfloat16)
    with torch.no_grad():
        yb = layer(xb)
    assert yb.dtype == torch.bfloat16 and torch.equal(yb, _unfused(xb, layer))


def test_linear_op_has_a_fake_impl_and_passes_opcheck(isas: list[str]) -> None:
    op = kernels.linear_op()
    assert isinstance(op, CustomOpDef)
    layer = _layer(100, 7, seed=6)
    packed, scale = layer.get_buffer("packed_weight"), layer.get_buffer("weight_scale")
    x = torch.randn(2, 3, 100)
    torch.library.opcheck(op, (x, packed, scale, 7))
    meta = op(x.to("meta"), packed.to("meta"), scale.to("meta"), 7)
    assert meta.shape == (2, 3, 7) and meta.dtype == torch.float32 and meta.device.type == "meta"
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fake = op(torch.empty(5, 100), torch.empty(2, 100, dtype=torch.uint8), torch.empty(1), 7)
    assert fake.shape == (5, 7) and fake.dtype == torch.float32
    assert torch.equal(torch.ops.r3mes.ternary_linear(x, packed, scale, 7), op(x, packed, scale, 7))


def test_fused_linear_bad_inputs_raise_typed_errors(isas: list[str]) -> None:
    layer = _layer(40, 8, seed=7)
    packed, scale = layer.get_buffer("packed_weight"), layer.get_buffer("weight_scale")
    with pytest.raises(ModelError, match="float32"):
        kernels.linear_float(torch.randn(2, 40, dtype=torch.float64), packed, scale, 8)
    with pytest.raises(ModelError, match="float32"):
        kernels.linear_float(torch.randint(0, 3, (2, 40), dtype=torch.int8), packed, scale, 8)
    with pytest.raises(ModelError, match="packed weight"):
        kernels.linear_float(torch.randn(2, 41), packed, scale, 8)
    with pytest.raises(ModelError, match="packed weight"):
        kernels.linear_float(torch.randn(2, 40), packed, scale, 12)
    with pytest.raises(ModelError, match="weight_scale"):
        kernels.linear_float(torch.randn(2, 40), packed, torch.ones(2), 8)
    with pytest.raises(ModelError, match="weight_scale"):
        kernels.linear_float(torch.randn(2, 40), packed, scale.double(), 8)
    with pytest.raises(ModelError, match="no features"):
        kernels.linear_float(torch.randn(2, 0), packed[:, :0], scale, 8)
    with pytest.raises(kernels.KernelUnavailable, match="no native kernel path"):
        kernels.linear_float(torch.randn(2, 40), packed, scale, 8, isa=kernels.REFERENCE)


def _greedy(prompt: list[int], threads: int) -> tuple[list[int], bytes]:
    """16 greedy tokens (KV cache, batch-1 steps) and the logits of the whole sequence."""
    torch.set_num_threads(threads)
    model, tokenizer = load_shipped_model()
    config = GenerationConfig(max_new_tokens=16)
    steps = generate_token_ids(model, [prompt], config, pad_id=tokenizer.pad_id)
    tokens = [int(t[0]) for t in steps]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens]))
    return tokens, logits.numpy().tobytes()


def test_shipped_model_greedy_tokens_and_logits_unchanged_by_the_fusion(
    isas: list[str], monkeypatch: pytest.MonkeyPatch, threads_restored: None
) -> None:
    _, tokenizer = load_shipped_model()
    prompt = tokenizer.encode("Return the sum of")
    fused = {threads: _greedy(prompt, threads) for threads in (1, 2)}
    with monkeypatch.context() as patch:
        patch.setattr(bitlinear, "_frozen_forward", _unfused)
        unfused = {threads: _greedy(prompt, threads) for threads in (1, 2)}
    kernels.set_isa(isas[0])  # scalar
    scalar = _greedy(prompt, 1)
    assert len(fused[1][0]) == 16
    assert fused[1] == fused[2] == unfused[1] == unfused[2] == scalar


def test_a_library_without_the_fused_entry_point_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `_ternary` library built from an older ternary.c (no `r3mes_ternary_linear`) is not
    used half-way: BitLinear takes its torch path, with the one warning saying why."""
    stale = next((Path(torch.__file__).parent / "lib").glob("libc10.so*"))
    layer = _layer(96, 21, seed=8)
    x = torch.randn(3, 96)
    expected = layer(x)
    monkeypatch.setattr(library, "_library_path", lambda: stale)
    library._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="older ternary.c"):
            assert not kernels.available()
        assert kernels.current_isa() == kernels.REFERENCE
        assert torch.equal(_bits(layer(x)), _bits(expected))
    finally:
        library._library.cache_clear()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_under_torch_compile_the_graph_holds_the_custom_op(isas: list[str]) -> None:
    """torch.compile traces the frozen forward to `r3mes::ternary_linear` (its fake impl gives
    the shapes) and the compiled module gives the eager bits."""
    layer = _layer(96, 21, seed=9)
    x = torch.randn(2, 3, 96)
    targets: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> object:
        targets.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            eager = layer(x)
            compiled = torch.compile(layer, backend=backend)(x)
    finally:
        torch._dynamo.reset()
    assert "r3mes.ternary_linear.default" in targets
    assert torch.equal(_bits(compiled), _bits(eager))
