"""r3mes's ternary kernel against llama.cpp's TQ2_0 on the same weights, shapes and threads.

Run: .venv/bin/python -m benchmarks.llamacpp [--quick] [--model DIR] [--threads N]
     [--ggml-lib DIR]

Needs the optional packages `llama-cpp-python` (which compiles llama.cpp, ggml included, from
source at install) and `gguf` (llama.cpp's own Python package for its file formats):
`.venv/bin/pip install -e '.[llamacpp]'` (versions pinned in pyproject.toml).  `--ggml-lib`
points at a folder holding libggml-base.so and libggml-cpu.so instead (a llama.cpp build).

What is compared: every ternary projection of the model (the 2B-4T shape: 30 layers x q, k,
v, o, gate, up, down = 210 matrices, 0.52 GB packed; `--quick`: the bitnet-quick shape) at
batch 1 (decode) and at batch 64 (prefill; projections whose width is not a whole number of
256-weight TQ2_0 blocks, only the quick shape's down_proj, are left out), float32
activations in and float32 out on both sides, the same number of threads:

* ours: `BitLinear`'s frozen path as the model runs it: one native call per projection
  (`kernels.linear_float`: per-token int8 activation codes, the kernel on the 2-bit packed
  weights, int32 sums, scaled back to float32); `ours_unfused_ms` is the same products the way
  BitLinear computed them before that call existed (quantization and rescale as about ten
  torch ops around the int8 kernel: the same bits, checked), `ours_kernel_only_ms` the int8
  kernel alone on codes made beforehand (no quantization, no rescale);
* llama.cpp: the same ternary values converted with `gguf.quants.quantize` to TQ2_0 (blocks
  of 256 weights at 2 bits plus one fp16 scale, 2.06 bits a weight; ggml quantizes the
  activations to Q8_K itself), all 210 products in one ggml graph computed by
  `ggml_graph_compute_with_ctx` (ggml's CPU backend, the code llama.cpp's decoder runs).

The conversion is checked before timing: ggml's products equal ours within the difference of
the two activation quantizations (per row vs per 256 block).  Each figure is the best of
interleaved runs (ours, then ggml, repeated), one JSON line each with the CPU, its flags and
the load average.  The weights cycle through 0.5 GB, so both sides read them from memory.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import cpu_description
from r3mes.errors import R3mesError
from r3mes.model.bitlinear import BitLinear, quantize_activations
from r3mes.model.checkpoint import load_pretrained
from r3mes.model.kernels import ternary as kernels
from r3mes.model.synthetic import preset, write_random_checkpoint

GGML_TYPE_F32 = 0
GGML_TYPE_TQ2_0 = 35  # ggml.h's enum ggml_type
QK_K = 256  # weights per TQ2_0 block


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]  # fmt: skip


def ggml_library_dir(given: Path | None) -> Path:
    """The folder of libggml-base / libggml-cpu: `--ggml-lib`, else llama-cpp-python's."""
    if given is not None:
        return given
    try:
        llama_cpp = importlib.import_module("llama_cpp")  # optional, not always installed
    except ImportError as exc:
        raise SystemExit(
            "llama-cpp-python is not installed: `.venv/bin/pip install -e '.[llamacpp]'` "
            f"(builds llama.cpp from source), or pass --ggml-lib DIR ({exc})"
        ) from exc
    return Path(str(llama_cpp.__file__)).resolve().parent / "lib"


class Ggml:
    """The few ggml C functions this benchmark calls, through ctypes."""

    def __init__(self, folder: Path) -> None:
        mode = ctypes.RTLD_GLOBAL
        self.base = ctypes.CDLL(str(folder / "libggml-base.so"), mode=mode)
        self.cpu = ctypes.CDLL(str(folder / "libggml-cpu.so"), mode=mode)
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        self.base.ggml_init.argtypes, self.base.ggml_init.restype = [_InitParams], ptr
        self.base.ggml_free.argtypes = [ptr]
        self.base.ggml_new_tensor_2d.argtypes = [ptr, ctypes.c_int, i64, i64]
        self.base.ggml_new_tensor_2d.restype = ptr
        self.base.ggml_get_data.argtypes, self.base.ggml_get_data.restype = [ptr], ptr
        self.base.ggml_nbytes.argtypes, self.base.ggml_nbytes.restype = [ptr], ctypes.c_size_t
        self.base.ggml_mul_mat.argtypes, self.base.ggml_mul_mat.restype = [ptr, ptr, ptr], ptr
        self.base.ggml_new_graph_custom.argtypes = [ptr, ctypes.c_size_t, ctypes.c_bool]
        self.base.ggml_new_graph_custom.restype = ptr
        self.base.ggml_build_forward_expand.argtypes = [ptr, ptr]
        self.cpu.ggml_graph_compute_with_ctx.argtypes = [ptr, ptr, ctypes.c_int]
        self.cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
        self.cpu.ggml_cpu_init()

    def tensor(self, ctx: int, kind: int, ne0: int, ne1: int, data: np.ndarray) -> int:
        t = self.base.ggml_new_tensor_2d(ctx, kind, ne0, ne1)
        nbytes = self.base.ggml_nbytes(t)
        if nbytes != data.nbytes:
            raise SystemExit(f"ggml tensor holds {nbytes} bytes, the data {data.nbytes}")
        ctypes.memmove(self.base.ggml_get_data(t), data.ctypes.data, nbytes)
        return int(t)

    def read(self, t: int, shape: tuple[int, int]) -> np.ndarray:
        buf = (ctypes.c_float * (shape[0] * shape[1])).from_address(self.base.ggml_get_data(t))
        return np.ctypeslib.as_array(buf).reshape(shape).copy()


def to_tq2_0(layer: BitLinear) -> np.ndarray:
    """The layer's weights W = ternary / weight_scale as TQ2_0 blocks (gguf's quantizer).

    Every block's scale is max|W| = 1 / weight_scale (or the block is all zero), so the
    quantization gives back exactly the ternary values: no precision is lost."""
    import gguf

    weights = (layer.ternary_weight() / layer.scale()).numpy()
    return np.asarray(gguf.quants.quantize(weights, gguf.GGMLQuantizationType.TQ2_0))


class GgmlProjections:
    """All projections as TQ2_0 in one ggml context, multiplied by one activation block."""

    def __init__(self, ggml: Ggml, layers: list[BitLinear], tokens: int) -> None:
        self.ggml, self.layers, self.tokens = ggml, layers, tokens
        blocks = [to_tq2_0(layer) for layer in layers]
        widths = sorted({layer.in_features for layer in layers})
        activations = sum(tokens * w * 4 for w in widths)
        outputs = sum(tokens * layer.out_features * 4 for layer in layers)
        size = sum(b.nbytes for b in blocks) + activations + outputs + 256 * 2**20
        self.ctx = ggml.base.ggml_init(_InitParams(size, None, False))
        if not self.ctx:
            raise SystemExit(f"ggml_init could not allocate {size} bytes")
        gen = torch.Generator().manual_seed(1)
        self.x = {w: torch.randn(tokens, w, generator=gen) for w in widths}
        self.inputs = {
            w: ggml.tensor(self.ctx, GGML_TYPE_F32, w, tokens, x.numpy()) for w, x in self.x.items()
        }
        self.graph = ggml.base.ggml_new_graph_custom(self.ctx, 4 * len(layers) + 64, False)
        self.outputs = []
        for layer, block in zip(layers, blocks, strict=True):
            w = ggml.tensor(self.ctx, GGML_TYPE_TQ2_0, layer.in_features, layer.out_features, block)
            out = ggml.base.ggml_mul_mat(self.ctx, w, self.inputs[layer.in_features])
            ggml.base.ggml_build_forward_expand(self.graph, out)
            self.outputs.append(int(out))

    def compute(self, threads: int) -> float:
        start = time.perf_counter()
        status = self.ggml.cpu.ggml_graph_compute_with_ctx(self.ctx, self.graph, threads)
        elapsed = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"ggml_graph_compute_with_ctx failed with status {status}")
        return elapsed

    def ours(self, threads: int) -> tuple[float, list[torch.Tensor]]:
        torch.set_num_threads(threads)
        outs = []
        with torch.no_grad():
            start = time.perf_counter()
            for layer in self.layers:
                outs.append(layer(self.x[layer.in_features]))
            elapsed = time.perf_counter() - start
        return elapsed, outs

    def unfused(self, threads: int) -> tuple[float, list[torch.Tensor]]:
        """BitLinear's frozen forward before the fused call: torch ops around the int8 kernel."""
        torch.set_num_threads(threads)
        outs = []
        with torch.no_grad():
            start = time.perf_counter()
            for layer in self.layers:
                x = self.x[layer.in_features]
                codes, input_scale = quantize_activations(x)
                flat = codes.reshape(-1, layer.in_features).to(torch.int8)
                packed = layer.get_buffer("packed_weight")
                acc = kernels.ops()[0](flat, packed, layer.out_features).float()
                outs.append(acc / (input_scale * layer.get_buffer("weight_scale")))
            elapsed = time.perf_counter() - start
        return elapsed, outs

    def kernel_only(self, threads: int) -> float:
        """The native kernel alone on int8 codes made beforehand (no per-layer torch ops)."""
        codes = {w: x.clamp(-1, 1).mul(127).round().to(torch.int8) for w, x in self.x.items()}
        start = time.perf_counter()
        for layer in self.layers:
            packed = layer.get_buffer("packed_weight")
            kernels.matmul_int8(
                codes[layer.in_features], packed, layer.out_features, threads=threads
            )
        return time.perf_counter() - start

    def check(self, threads: int) -> float:
        """Largest relative difference between ggml's products and ours (after one compute)."""
        self.compute(threads)
        worst = 0.0
        _, ours = self.ours(threads)
        for layer, out, mine in zip(self.layers, self.outputs, ours, strict=True):
            theirs = torch.from_numpy(self.ggml.read(out, (self.tokens, layer.out_features)))
            scale = float(mine.abs().max()) or 1.0
            worst = max(worst, float((theirs - mine).abs().max()) / scale)
        return worst

    def close(self) -> None:
        self.ggml.base.ggml_free(self.ctx)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the bitnet-quick shape")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every core)")
    parser.add_argument("--ggml-lib", type=Path, default=None, help="folder of libggml-*.so")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs (0: 5 quick, 9)")
    args = parser.parse_args()
    if args.threads < 0 or args.repeats < 0:
        parser.error("--threads and --repeats must be 0 (default) or more")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a checkpoint folder (no config.json)")
    return args


def main() -> None:
    args = _parse_args()
    if not kernels.available():
        raise SystemExit("the native ternary kernel is not built: `pip install -e .`")
    ggml = Ggml(ggml_library_dir(args.ggml_lib))
    threads = args.threads or torch.get_num_threads()
    repeats = args.repeats or (5 if args.quick else 9)
    with tempfile.TemporaryDirectory(prefix="r3mes-llamacpp-") as tmp:
        folder = args.model or write_random_checkpoint(
            preset("bitnet-quick" if args.quick else "bitnet-2b4t"), Path(tmp) / "m", seed=0
        )
        try:
            model = load_pretrained(folder)
        except R3mesError as exc:
            raise SystemExit(f"--model: {exc}") from exc
        # TQ2_0 rows are whole 256-weight blocks: the 2B-4T widths (2560, 6912) all are; the
        # quick shape's down_proj (3456 wide) is not and is left out of both sides
        layers = [layer for _, layer in model.bit_linears() if layer.in_features % QK_K == 0]
        shape = f"h{model.config.hidden_size}xL{model.config.num_hidden_layers}"
        for tokens in (1, 64):
            run(ggml, layers, tokens, threads, repeats, shape)


def run(
    ggml: Ggml, layers: list[BitLinear], tokens: int, threads: int, repeats: int, shape: str
) -> None:
    bench = GgmlProjections(ggml, layers, tokens)
    try:
        error = bench.check(threads)
        if error > 0.05:
            raise SystemExit(f"ggml's TQ2_0 products differ from ours by {error:.3f}: conversion")
        fused, unfused = bench.ours(threads)[1], bench.unfused(threads)[1]
        if not all(torch.equal(a, b) for a, b in zip(fused, unfused, strict=True)):
            raise SystemExit("the fused linear's products differ from the unfused torch path")
        ours_s, theirs_s, kernel_s = float("inf"), float("inf"), float("inf")
        unfused_s = float("inf")
        for _ in range(repeats):  # interleaved: a burst of load hits both sides alike
            ours_s = min(ours_s, bench.ours(threads)[0])
            theirs_s = min(theirs_s, bench.compute(threads))
            unfused_s = min(unfused_s, bench.unfused(threads)[0])
            kernel_s = min(kernel_s, bench.kernel_only(threads))
    finally:
        bench.close()
    packed = sum(layer.weight_bytes() for layer in layers)
    row: dict[str, Any] = {
        "figure": f"ternary_projections_batch{tokens}_vs_llamacpp_tq2_0",
        "value": round(ours_s * 1e3, 2),
        "unit": "ms for all projections",
        "baseline": round(theirs_s * 1e3, 2),
        "ratio": round(theirs_s / ours_s, 3),
        "goal": "measured (ratio > 1: ours faster)",
        "projections": len(layers),
        "packed_gb": round(packed / 1e9, 3),
        "ours_gb_per_s": round(packed / ours_s / 1e9, 2),
        "llamacpp_gb_per_s": round(packed / theirs_s / 1e9, 2),
        "ours_unfused_ms": round(unfused_s * 1e3, 2),
        "ours_kernel_only_ms": round(kernel_s * 1e3, 2),
        "max_rel_diff": round(error, 4),
        "threads": threads,
        "isa": kernels.current_isa(),
        "shape": shape,
        "load_avg": round(os.getloadavg()[0], 2),
        **cpu_description(),
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
