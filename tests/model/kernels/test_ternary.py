"""The native ternary kernel: exact, and the same bits on every path, thread count and process."""

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch._library.custom_ops import CustomOpDef

from r3mes.model.bitlinear import BitLinear, pack_ternary
from r3mes.model.errors import ModelError
from r3mes.model.kernels import library
from r3mes.model.kernels import ternary as kernels
from r3mes.model.lora import LoraConfig, apply_lora
from r3mes.model.tiny import make_tiny_model

REPO = Path(__file__).resolve().parents[3]
# (M, K, N): K off the 32/64-byte vector widths, N not a multiple of 4, M across the row blocks
SHAPES = [(1, 64, 4), (1, 777, 13), (3, 100, 7), (4, 256, 16), (9, 130, 33), (6, 2560, 70)]
THREADS = (1, 2, 3, 7)


def _case(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-1, 2, (n, k), generator=g).float()
    x = torch.randint(-128, 128, (m, k), generator=g).to(torch.int8)
    return w, x, pack_ternary(w)


def test_this_cpu_runs_the_scalar_path_and_its_best(isas: list[str]) -> None:
    assert isas[0] == "scalar"
    assert kernels.best_isa() == isas[-1]
    if "avx512vnni" in isas:
        assert "avx512bw" in isas and "avx2" in isas


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_matmul_is_exact_on_every_path_and_thread_count(
    isas: list[str], m: int, k: int, n: int
) -> None:
    w, x, packed = _case(m, k, n, seed=m * 1000 + k + n)
    exact = (x.long() @ w.long().T).to(torch.int32)
    for isa in isas:
        for threads in THREADS:
            out = kernels.matmul_int8(x, packed, n, isa=isa, threads=threads)
            assert out.dtype == torch.int32
            assert torch.equal(out, exact), (isa, threads)


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
def test_input_gradient_is_identical_on_every_path_and_thread_count(
    isas: list[str], m: int, k: int, n: int
) -> None:
    w, _, packed = _case(m, k, n, seed=k)
    grad = torch.randn(m, n, generator=torch.Generator().manual_seed(n))
    first = kernels.matmul_t_float(grad, packed, k, isa="scalar", threads=1)
    torch.testing.assert_close(first, grad @ w, rtol=1e-5, atol=1e-4)
    for isa in isas:
        for threads in THREADS:
            out = kernels.matmul_t_float(grad, packed, k, isa=isa, threads=threads)
            assert torch.equal(out, first), (isa, threads)


def test_extreme_codes_do_not_saturate(isas: list[str]) -> None:
    k = 4096
    x = torch.full((2, k), -128, dtype=torch.int8)
    x[1] = 127
    w = torch.ones(5, k)
    w[1] = -1
    w[2] = 0
    exact = (x.long() @ w.long().T).to(torch.int32)
    for isa in isas:
        assert torch.equal(kernels.matmul_int8(x, pack_ternary(w), 5, isa=isa), exact)


def _frozen_layer(seed: int, k: int = 96, n: int = 21) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(k, n)
    layer.freeze()
    return layer


def test_bitlinear_matches_the_reference_path_bit_for_bit(isas: list[str]) -> None:
    layer = _frozen_layer(1)
    x = torch.randn(2, 5, 96, requires_grad=True)
    results = {}
    try:
        for isa in [kernels.REFERENCE, *isas]:
            kernels.set_isa(isa)
            y = layer(x)
            (grad,) = torch.autograd.grad((y * torch.arange(21.0)).sum(), x)
            results[isa] = (y.detach(), grad)
    finally:
        kernels.set_isa(None)
    ref_y, ref_grad = results.pop(kernels.REFERENCE)
    scalar_grad = results["scalar"][1]
    for isa, (y, grad) in results.items():
        assert torch.equal(y, ref_y), isa
        assert torch.equal(grad, scalar_grad), isa
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def _logits_digest(model: torch.nn.Module, ids: torch.Tensor) -> str:
    with torch.no_grad():
        logits = model(ids)
    return hashlib.sha256(logits.numpy().tobytes()).hexdigest()


def test_tiny_model_logits_identical_on_every_path(isas: list[str]) -> None:
    model = make_tiny_model(seed=5)
    model.freeze_backbone()
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator())
    digests = {}
    try:
        for isa in [kernels.REFERENCE, *isas]:
            kernels.set_isa(isa)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                digests[(isa, threads)] = _logits_digest(model, ids)
    finally:
        kernels.set_isa(None)
        torch.set_num_threads(1)
    assert len(set(digests.values())) == 1, digests


_CHILD = """
import hashlib, sys, torch
from r3mes.model.kernels import ternary as kernels
from r3mes.model.tiny import make_tiny_model
kernels.set_isa(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
model = make_tiny_model(seed=5)
model.freeze_backbone()
ids = torch.arange(22).reshape(2, 11) % model.config.vocab_size
with torch.no_grad():
    print(hashlib.sha256(model(ids).numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_logits_identical_across_processes(isas: list[str]) -> None:
    outputs = set()
    for isa, threads in [(kernels.REFERENCE, 1), (isas[0], 2), (isas[-1], 1), (isas[-1], 2)]:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, isa, str(threads)],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        outputs.add(done.stdout.strip())
    model = make_tiny_model(seed=5)
    model.freeze_backbone()
    ids = torch.arange(22).reshape(2, 11) % model.config.vocab_size
    outputs.add(_logits_digest(model, ids))
    assert len(outputs) == 1, outputs


def test_lora_training_step_is_identical_on_every_kernel_path(isas: list[str]) -> None:
    grads = {}
    for isa in isas:
        kernels.set_isa(isa)
        try:
            model = make_tiny_model(seed=2)
            model.freeze_backbone()
            config = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "o_proj"))
            apply_lora(model, config, name="a", generator=torch.Generator().manual_seed(0))
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, generator=torch.Generator().manual_seed(1))
            ids = torch.arange(20).reshape(2, 10)
            loss = model(ids).logsumexp(-1).mean()
            loss.backward()
            grads[isa] = [p.grad.clone() for n, p in model.named_parameters() if p.grad is not None]
        finally:
            kernels.set_isa(None)
    first = grads[isas[0]]
    assert first
    for isa, g in grads.items():
        assert all(torch.equal(a, b) for a, b in zip(g, first, strict=True)), isa


def test_custom_ops_pass_opcheck_and_have_fake_impls(isas: list[str]) -> None:
    matmul, matmul_t = kernels.ops()
    _, x, packed = _case(3, 100, 7, seed=0)
    assert isinstance(matmul, CustomOpDef)
    assert isinstance(matmul_t, CustomOpDef)
    torch.library.opcheck(matmul, (x, packed, 7))
    torch.library.opcheck(matmul_t, (torch.randn(3, 7), packed, 100))
    meta = matmul(x.to("meta"), packed.to("meta"), 7)
    assert meta.shape == (3, 7) and meta.dtype == torch.int32
    assert torch.equal(torch.ops.r3mes.ternary_matmul(x, packed, 7), matmul(x, packed, 7))


def test_bad_inputs_raise_typed_errors(isas: list[str]) -> None:
    _, x, packed = _case(2, 40, 8, seed=0)
    with pytest.raises(ModelError, match="int8"):
        kernels.matmul_int8(x.float(), packed, 8)
    with pytest.raises(ModelError, match="packed weight"):
        kernels.matmul_int8(x, packed, 12)
    with pytest.raises(ModelError, match="float32"):
        kernels.matmul_t_float(torch.randn(2, 8, dtype=torch.float64), packed, 40)
    with pytest.raises(kernels.KernelUnavailable, match="unknown"):
        kernels.set_isa("sse9")
    if "neon" not in isas:
        with pytest.raises(kernels.KernelUnavailable, match="cannot run here"):
            kernels.set_isa("neon")
    assert kernels.current_isa() == kernels.best_isa()


def test_missing_library_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _frozen_layer(4)
    x = torch.randn(3, 96)
    expected = layer(x)
    monkeypatch.setattr(library, "_library_path", lambda: None)
    library._library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not kernels.available()
            out = layer(x)
            layer(x)
        assert [str(w.message) for w in caught if "ternary kernel" in str(w.message)] == [
            str(caught[0].message)
        ]
        assert "torch path" in str(caught[0].message)
        assert kernels.current_isa() == kernels.REFERENCE
        assert torch.equal(out, expected)
    finally:
        library._library.cache_clear()


@pytest.mark.slow
def test_build_without_a_compiler_still_succeeds(tmp_path: Path) -> None:
    env = {**os.environ, "CC": "/nonexistent/cc", "LDSHARED": "/nonexistent/cc -shared"}
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "native ternary kernel not built" in done.stdout + done.stderr
    assert not list((tmp_path / "lib").rglob("_ternary*"))


HARNESS = Path(__file__).with_name("harness.c")
SOURCES = [REPO / "src" / "r3mes" / "model" / "kernels" / name for name in ("ternary.c", "head.c")]


def _compile_and_run(compiler: str, runner: list[str], tmp_path: Path, name: str) -> str:
    binary = tmp_path / name
    flags = ["-O2", "-std=c11", "-pthread", "-ffp-contract=off", *(["-static"] if runner else [])]
    subprocess.run(
        [compiler, *flags, str(HARNESS), *map(str, SOURCES), "-o", str(binary), "-lm"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    done = subprocess.run([*runner, str(binary)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    return done.stdout


@pytest.mark.slow
def test_c_harness_every_host_path_against_a_plain_reference(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = _compile_and_run(cc, [], tmp_path, "host")
    assert out.strip().endswith("OK")


@pytest.mark.slow
def test_c_harness_neon_paths_under_qemu(tmp_path: Path) -> None:
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if cross is None or qemu is None:
        why = "needs aarch64-linux-gnu-gcc and qemu-aarch64: run `bash scripts/arm.sh`"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with_dotprod = _compile_and_run(cross, [qemu, "-cpu", "max"], tmp_path, "arm")
    assert "isa 4 supported 1" in with_dotprod and "isa 5 supported 1" in with_dotprod
    without = _compile_and_run(cross, [qemu, "-cpu", "cortex-a53"], tmp_path, "arm53")
    assert "isa 4 supported 1" in without and "isa 5 supported 0" in without


def test_pool_serves_concurrent_callers_and_a_forked_child(isas: list[str]) -> None:
    """The kernel's thread pool: calls from several Python threads at once (ctypes releases the
    GIL) and from a child forked after the pool started all give the exact product."""
    import threading
    import time

    w, x, packed = _case(5, 2560, 70, seed=3)
    exact = (x.to(torch.int32) @ w.to(torch.int32).T).to(torch.int32)
    assert torch.equal(kernels.matmul_int8(x, packed, 70, threads=3), exact)  # pool started
    results: list[bool] = []

    def call() -> None:
        for _ in range(25):
            out = kernels.matmul_int8(x, packed, 70, isa=isas[-1], threads=3)
            results.append(torch.equal(out, exact))

    callers = [threading.Thread(target=call) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=300)
    assert not any(c.is_alive() for c in callers) and results == [True] * 75

    expected = exact.numpy().tobytes()
    pid = os.fork()
    if pid == 0:  # the child: the parent's workers do not exist here
        ok = kernels.matmul_int8(x, packed, 70, threads=3).numpy().tobytes() == expected
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in the kernel (pool not reset after fork)")
    assert os.waitstatus_to_exitcode(done[1]) == 0
