"""The bfloat16 head (`head.c`): the same bits on every path and thread count, close to an exact
product, differentiable, and wired into the model, its loader and serving."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._library.custom_ops import CustomOpDef

from r3mes.model.checkpoint import load_pretrained, save_pretrained
from r3mes.model.errors import CheckpointError, ModelError
from r3mes.model.generate import GenerationConfig, generate_token_ids
from r3mes.model.kernels import head
from r3mes.model.kernels import ternary as kernels
from r3mes.model.lora import LoraConfig, apply_lora
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.tiny import make_tiny_model

# (M, K, N): K off the 16-lane groups, N off the 4-row blocks, M across the 4-row blocks and
# past the 64-row chunk the forward keeps in cache
SHAPES = [
    (1, 16, 4), (1, 2560, 9), (3, 100, 7), (5, 517, 70), (9, 33, 13), (17, 45, 23),
    (70, 48, 301), (70, 130, 9),
]  # fmt: skip
THREADS = (1, 2, 3)


def _case(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g), torch.randn(n, k, generator=g).bfloat16()


def _close_to_exact(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """got ~ a @ b in float64, within float32 rounding of the sum of |terms|."""
    exact = a.double() @ b.double()
    bound = a.double().abs() @ b.double().abs()
    assert bool(((got.double() - exact).abs() <= 1e-5 * bound + 1e-30).all())


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_forward_is_identical_on_every_path_and_thread_count(
    isas: list[str], m: int, k: int, n: int
) -> None:
    x, w = _case(m, k, n, seed=m * 1000 + k + n)
    first = head.linear(x, w, isa="scalar", threads=1)
    _close_to_exact(first, x, w.T)
    for isa in isas:
        for threads in THREADS:
            assert torch.equal(head.linear(x, w, isa=isa, threads=threads), first), (isa, threads)


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_input_gradient_is_identical_on_every_path_and_thread_count(
    isas: list[str], m: int, k: int, n: int
) -> None:
    _, w = _case(m, k, n, seed=k)
    grad = torch.randn(m, n, generator=torch.Generator().manual_seed(n))
    first = head.matmul_t(grad, w, isa="scalar", threads=1)
    _close_to_exact(first, grad, w)
    for isa in isas:
        for threads in THREADS:
            got = head.matmul_t(grad, w, isa=isa, threads=threads)
            assert torch.equal(got, first), (isa, threads)


def test_batch_dims_and_autograd_match_the_kernels(isas: list[str]) -> None:
    x, w = _case(6, 40, 11, seed=3)
    x3 = x.reshape(2, 3, 40).requires_grad_(True)
    out = head.logits(x3, w)
    assert out.shape == (2, 3, 11) and out.dtype == torch.float32
    assert torch.equal(out.reshape(6, 11), head.linear(x, w))
    grad = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(4))
    (gx,) = torch.autograd.grad(out, x3, grad)
    assert torch.equal(gx.reshape(6, 40), head.matmul_t(grad.reshape(6, 11), w))


def test_reference_path_computes_the_same_product(isas: list[str]) -> None:
    x, w = _case(4, 100, 20_000, seed=9)  # more rows than one widened chunk
    native = head.logits(x, w)
    kernels.set_isa(kernels.REFERENCE)
    try:
        reference = head.logits(x, w)
    finally:
        kernels.set_isa(None)
    _close_to_exact(reference, x, w.T)
    assert torch.allclose(native, reference, rtol=1e-5, atol=1e-4)


def test_custom_ops_pass_opcheck_and_have_fake_impls(isas: list[str]) -> None:
    linear, matmul_t = head.ops()
    assert isinstance(linear, CustomOpDef) and isinstance(matmul_t, CustomOpDef)
    x, w = _case(3, 40, 7, seed=0)
    torch.library.opcheck(linear, (x, w))
    torch.library.opcheck(matmul_t, (torch.randn(3, 7), w))
    meta = linear(x.to("meta"), w.to("meta"))
    assert meta.shape == (3, 7) and meta.dtype == torch.float32
    assert torch.equal(torch.ops.r3mes.bf16_linear(x, w), head.linear(x, w))


def test_bad_inputs_raise_typed_errors(isas: list[str]) -> None:
    x, w = _case(2, 40, 8, seed=0)
    with pytest.raises(ModelError, match="bfloat16"):
        head.linear(x, w.float())
    with pytest.raises(ModelError, match="input features"):
        head.linear(torch.randn(2, 41), w)
    with pytest.raises(ModelError, match="float32"):
        head.linear(x.double(), w)
    with pytest.raises(ModelError, match="K = 0"):
        head.linear(torch.randn(2, 0), w[:, :0])
    with pytest.raises(ModelError, match="rows"):
        head.matmul_t(torch.randn(2, 9), w)
    with pytest.raises(ModelError, match="float32"):
        head.matmul_t(torch.randn(2, 8).half(), w)
    with pytest.raises(ModelError, match="frozen"):
        head.logits(x, torch.nn.Parameter(w))
    assert head.linear(torch.randn(0, 40), w).shape == (0, 8)


def _frozen_tiny(seed: int) -> BitNetForCausalLM:
    model = make_tiny_model(seed=seed)
    model.freeze_backbone()
    return model


def test_model_holds_its_embedding_in_bf16_and_computes_the_rounded_model(isas: list[str]) -> None:
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    model = _frozen_tiny(seed=4)
    with torch.no_grad():  # the float32 model whose embedding holds bfloat16 values
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight.bfloat16().float())
        expected = model(ids)
    before = model.model.embed_tokens.weight.clone()
    model.hold_embedding(torch.bfloat16)
    assert model.embedding_dtype == torch.bfloat16
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight.float(), before)  # exact: no value lost
    with torch.no_grad():
        got = model(ids)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    model.hold_embedding(torch.float32)  # and back, losslessly
    assert torch.equal(model.model.embed_tokens.weight, before)


def test_bf16_embedding_rules(isas: list[str]) -> None:
    training = make_tiny_model(seed=1)
    with pytest.raises(ModelError, match="frozen"):
        training.hold_embedding(torch.bfloat16)
    assert training.embedding_dtype == torch.float32  # nothing changed
    with pytest.raises(ModelError, match="float32 or bfloat16"):
        _frozen_tiny(seed=1).hold_embedding(torch.float16)


def test_logits_and_lora_training_identical_on_every_kernel_path(isas: list[str]) -> None:
    digests, grads = {}, {}
    ids = torch.arange(20).reshape(2, 10)
    try:
        for isa in isas:
            kernels.set_isa(isa)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                model = _frozen_tiny(seed=2)
                model.hold_embedding(torch.bfloat16)
                config = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "o_proj"))
                apply_lora(model, config, name="a", generator=torch.Generator().manual_seed(0))
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        torch.nn.init.normal_(param, generator=torch.Generator().manual_seed(1))
                logits = model(ids)
                digests[(isa, threads)] = hashlib.sha256(logits.detach().numpy()).hexdigest()
                logits.logsumexp(-1).mean().backward()
                grads[(isa, threads)] = [
                    p.grad.clone() for p in model.parameters() if p.grad is not None
                ]
    finally:
        kernels.set_isa(None)
        torch.set_num_threads(1)
    assert len(set(digests.values())) == 1, digests
    first = next(iter(grads.values()))
    assert len(first) == 12  # A and B of 3 targets in 2 layers
    for key, g in grads.items():
        assert all(torch.equal(a, b) for a, b in zip(g, first, strict=True)), key


EAGER_DECODE_AND_TRAIN = """
import sys, torch
from r3mes.model.generate import GenerationConfig, generate_token_ids
from r3mes.model.lora import LoraConfig, apply_lora
from r3mes.model.tiny import make_tiny_model
model = make_tiny_model(0)
model.freeze_backbone()
model.hold_embedding(torch.bfloat16)
list(generate_token_ids(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=3), pad_id=0))
apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")), name="a",
           generator=torch.Generator().manual_seed(0))
model(torch.arange(10).reshape(1, 10)).logsumexp(-1).mean().backward()
assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
print(sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "triton"))))
"""


def test_eager_decode_and_training_never_import_dynamo(isas: list[str]) -> None:
    """An eager decode and LoRA backward through the bf16 head and the ternary input gradient
    call the kernels, not the custom ops, whose wrapper imports torch._dynamo and triton on
    first use (~115 MiB resident a 2B decode paid for nothing)."""
    done = subprocess.run(
        [sys.executable, "-c", EAGER_DECODE_AND_TRAIN],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_loader_reads_the_embedding_straight_into_bf16(tmp_path: Path, isas: list[str]) -> None:
    model = _frozen_tiny(seed=6)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight.bfloat16().float())
    packed = save_pretrained(model, tmp_path / "packed", packed=True)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    full = load_pretrained(packed)
    half = load_pretrained(packed, embedding_dtype="bfloat16")
    assert full.embedding_dtype == torch.float32 and half.embedding_dtype == torch.bfloat16
    assert half.lm_head.weight is half.model.embed_tokens.weight
    assert not half.lm_head.weight.requires_grad
    with torch.no_grad():
        assert torch.allclose(half(ids), full(ids), rtol=1e-5, atol=1e-5)
    # the token loop serving and `r3mes model generate` run
    greedy = GenerationConfig(max_new_tokens=4)
    tokens = [
        [int(t) for t in step] for step in generate_token_ids(half, [[5, 6, 7]], greedy, pad_id=0)
    ]
    assert len(tokens) == 4
    assert tokens == [
        [int(t) for t in step] for step in generate_token_ids(full, [[5, 6, 7]], greedy, pad_id=0)
    ]
    with pytest.raises(ModelError, match="not one of"):
        load_pretrained(packed, embedding_dtype="float16")
    master = save_pretrained(make_tiny_model(seed=6), tmp_path / "master", packed=False)
    with pytest.raises(CheckpointError, match="packed"):
        load_pretrained(master, embedding_dtype="bfloat16")
