"""Decode a packed BitNet checkpoint with the native kernels and numpy: torch is never imported.

The torch model (`modeling`) trains, serves batches and is what validators re-execute.  For
one user's chat on a CPU it carries a runtime that costs more than the work: `import torch`
(the PyPI build, which links the CUDA libraries) is ~500 MiB of resident memory before a
single weight, a third of a whole 2B-4T decode.  This module runs the same forward for one
sequence - embedding, RMSNorm, RoPE, grouped-query attention over a KV cache, BitNet's
sub-norms, the ReLU^2 MLP, the head - with the same native kernels (`kernels/library`):

* every projection is `r3mes_ternary_linear` on the packed 2-bit bytes as the checkpoint
  stores them (memory-mapped, never copied), so its output has the torch path's bits for the
  same input;
* the head is `r3mes_bf16_linear` on the embedding held in bfloat16 (the checkpoint's bytes
  when it stores bfloat16, as 2B-4T does; float32 ones rounded to nearest-even once, as
  `load_pretrained(embedding_dtype="bfloat16")` does);
* norms, RoPE and softmax are numpy float32: the same formulas in the same order as the torch
  model, but numpy's reductions and transcendental functions may round the last bit
  differently, so logits agree to ~1e-6 relative, not to the bit.  Validators never use this
  path; training and re-execution stay on the torch model.

Sampling (temperature, top-k, top-p) draws from numpy's PCG64 seeded by the request: a seed
repeats exactly here, but it is another stream than the torch path's generator.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from r3mes.model.checkpoint_files import (
    FLOAT_CODES,
    bf16_to_float32,
    float32_to_bf16,
    load_config,
    map_safetensors,
    weight_files,
)
from r3mes.model.config import BitNetConfig, tensor_shapes
from r3mes.model.decoding import GenerationConfig, encode_prompt, text_pieces
from r3mes.model.errors import AdapterError, CheckpointError, GenerationError, ModelError
from r3mes.model.kernels import library
from r3mes.model.lora_config import PEFT_PREFIX, LoraConfig
from r3mes.model.peft_config import load_adapter_arrays
from r3mes.model.tokenizer import Tokenizer

PROJECTIONS = {
    "q_proj": ("self_attn", "q"), "k_proj": ("self_attn", "k"), "v_proj": ("self_attn", "v"),
    "o_proj": ("self_attn", "o"), "gate_proj": ("mlp", "gate"), "up_proj": ("mlp", "up"),
    "down_proj": ("mlp", "down"),
}  # fmt: skip
"""HF projection name -> (its block, the `_Layer` field holding it)."""
SCAN_CHUNK = 1 << 22
"""Elements scanned at a time for invalid codes and non-finite values (bounded temporaries)."""


def _pointer(array: np.ndarray) -> int:
    return int(array.ctypes.data)


@dataclass(frozen=True)
class _Lora:
    """A LoRA update of one projection: y += (x @ a.T) @ b.T * scaling, in float32."""

    a: np.ndarray
    b: np.ndarray
    scaling: np.float32


@dataclass(frozen=True)
class _Projection:
    """One BitLinear: packed (ceil(N/4), K) uint8 as stored, its dividing scale (1,), and the
    attached adapter's LoRA update, if any."""

    packed: np.ndarray
    scale: np.ndarray
    out_features: int
    lora: _Lora | None = None

    def __call__(self, x: np.ndarray, lib: ctypes.CDLL, isa: int, threads: int) -> np.ndarray:
        rows, k = x.shape
        out = np.empty((rows, self.out_features), dtype=np.float32)
        rc = lib.r3mes_ternary_linear(
            _pointer(x), _pointer(self.packed), _pointer(self.scale), _pointer(out), rows, k,
            self.out_features, isa, threads,
        )  # fmt: skip
        library.check(rc, "ternary linear")
        if self.lora is not None:
            out += np.matmul(np.matmul(x, self.lora.a.T), self.lora.b.T) * self.lora.scaling
        return out


@dataclass(frozen=True)
class _Layer:
    q: _Projection
    k: _Projection
    v: _Projection
    o: _Projection
    gate: _Projection
    up: _Projection
    down: _Projection
    input_norm: np.ndarray
    post_attention_norm: np.ndarray
    attn_sub_norm: np.ndarray
    ffn_sub_norm: np.ndarray

    def projections(self) -> tuple[_Projection, ...]:
        """The seven projections, q k v o gate up down."""
        return (self.q, self.k, self.v, self.o, self.gate, self.up, self.down)

    def norms(self) -> tuple[np.ndarray, ...]:
        """The four norm weights."""
        return (self.input_norm, self.post_attention_norm, self.attn_sub_norm, self.ffn_sub_norm)


def kv_bytes_per_token(config: BitNetConfig) -> int:
    """Bytes one cached position takes: float32 keys and values of every layer."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4


class KVBuffer:
    """Keys and values of one sequence, float32 (layers, kv_heads, capacity, head_dim) each.

    Allocated zeroed at full capacity: the OS backs such an allocation lazily, so only the
    positions written become resident memory (what `nbytes` counts).
    """

    def __init__(self, config: BitNetConfig, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise GenerationError(f"a KV buffer needs a positive capacity, got {capacity!r}")
        shape = (config.num_hidden_layers, config.num_key_value_heads, capacity, config.head_dim)
        self.keys = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.capacity = capacity
        self.length = 0
        self._per_token = kv_bytes_per_token(config)

    def nbytes(self) -> int:
        """Bytes of the positions written so far (keys and values, every layer)."""
        return self._per_token * self.length


class TorchFreeModel:
    """A packed BitNet checkpoint, ready to decode one sequence at a time without torch."""

    def __init__(
        self,
        config: BitNetConfig,
        layers: list[_Layer],
        *,
        embedding: np.ndarray,
        head: np.ndarray,
        final_norm: np.ndarray,
        threads: int | None = None,
    ) -> None:
        self.config = config
        self.layers = layers
        self.embedding = embedding
        """bfloat16 bits (vocab, hidden) as uint16."""
        self.head = head
        """bfloat16 bits (vocab, hidden); the embedding itself when tied."""
        self.final_norm = final_norm
        self.threads = threads if threads else _cores()
        try:
            self._lib = library.need_library()
        except library.KernelUnavailable as exc:
            raise library.KernelUnavailable(
                f"{exc}; the torchfree runtime needs it (use the torch runtime instead)"
            ) from exc
        dim = config.head_dim
        exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
        self._inv_freq = np.float32(1.0) / np.power(np.float32(config.rope_theta), exponents)

    @classmethod
    def load(cls, directory: Path | str, *, threads: int | None = None) -> TorchFreeModel:
        """Map the packed checkpoint in `directory` (config.json + safetensors) for decoding.

        Projections must be stored packed (uint8 with `weight_scale`); a float-master
        checkpoint is refused with the command that converts it.  Every tensor is checked
        against the config's shapes; packed bytes for the invalid code 3, floats for NaN/inf.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(directory, "not a folder; pass the checkpoint directory")
        if threads is not None and (isinstance(threads, bool) or threads < 0):
            raise ModelError(f"threads must be 0 (every core) or positive, got {threads!r}")
        config, quant = load_config(directory)
        tensors: dict[str, tuple[str, np.ndarray, Path]] = {}
        for file in weight_files(directory):
            for key, (code, array) in map_safetensors(file).items():
                if key in tensors:
                    raise CheckpointError(file, f"tensor {key} appears in two shards")
                tensors[key] = (code, array, file)
        reader = _Reader(directory, tensors)
        multiplies = quant is not None and quant.scale_multiplies
        shapes = tensor_shapes(config)
        layers = [
            _layer_from(reader, shapes, f"model.layers.{n}", multiplies=multiplies)
            for n in range(config.num_hidden_layers)
        ]
        embedding = reader.bf16("model.embed_tokens.weight", shapes["model.embed_tokens.weight"])
        head = embedding
        if config.tie_word_embeddings:
            reader.discard("lm_head.weight")  # some tied checkpoints store the head anyway
        else:
            head = reader.bf16("lm_head.weight", shapes["lm_head.weight"])
        final_norm = reader.float32("model.norm.weight", shapes["model.norm.weight"])
        reader.check_all_used()
        return cls(
            config, layers, embedding=embedding, head=head, final_norm=final_norm, threads=threads
        )

    def attach_adapter(
        self, directory: Path | str, *, expected_base: str | None = None
    ) -> LoraConfig:
        """Apply the PEFT LoRA adapter in `directory` to every forward from now on (replacing
        any attached before); on any error the model is unchanged.

        `expected_base` (e.g. `SHIPPED_MODEL_NAME`) must equal the adapter's recorded base
        model.  The update is computed in float32 beside the ternary product, as `LoraLinear`
        does.
        """
        state, config, base = load_adapter_arrays(directory)
        where = Path(directory)
        if expected_base is not None and base != expected_base:
            raise AdapterError(
                f"{where}: adapter was made for base model {base!r}, not {expected_base!r}"
            )
        scaling = np.float32(config.scaling)
        layers = []
        for n, layer in enumerate(_without_adapter(self.layers)):
            updates: dict[str, Any] = {}  # _Layer field -> its projection with the update
            for target in config.target_modules:
                block, field = PROJECTIONS[target]
                path = f"{PEFT_PREFIX}model.layers.{n}.{block}.{target}"
                proj: _Projection = getattr(layer, field)
                a = state.pop(f"{path}.lora_A.weight", None)
                b = state.pop(f"{path}.lora_B.weight", None)
                if a is None or b is None:
                    raise AdapterError(f"{where}: missing LoRA weights of {path}")
                shapes = ((config.r, proj.packed.shape[1]), (proj.out_features, config.r))
                if (a.shape, b.shape) != shapes:
                    raise AdapterError(
                        f"{where}: {path} has LoRA shapes {a.shape}, {b.shape}; this model "
                        f"needs {shapes[0]}, {shapes[1]}"
                    )
                updates[field] = replace(proj, lora=_Lora(a, b, scaling))
            layers.append(replace(layer, **updates))
        if state:
            raise AdapterError(f"{where}: unexpected adapter tensors {sorted(state)[:3]}")
        self.layers = layers
        return config

    def detach_adapter(self) -> None:
        """Forward with the base weights alone again."""
        self.layers = _without_adapter(self.layers)

    def held_bytes(self) -> int:
        """Bytes the model holds: packed projections, scales, norms, embedding (+ head)."""
        total = self.embedding.nbytes + self.final_norm.nbytes
        if self.head is not self.embedding:
            total += self.head.nbytes
        for layer in self.layers:
            total += sum(p.packed.nbytes + p.scale.nbytes for p in layer.projections())
            total += sum(n.nbytes for n in layer.norms())
        return int(total)

    def new_cache(self, capacity: int) -> KVBuffer:
        """An empty KV buffer for a sequence of at most `capacity` tokens."""
        if capacity > self.config.max_position_embeddings:
            raise GenerationError(
                f"a sequence of {capacity} tokens exceeds the model's "
                f"{self.config.max_position_embeddings} positions"
            )
        return KVBuffer(self.config, capacity)

    def forward(self, token_ids: Sequence[int], cache: KVBuffer) -> np.ndarray:
        """float32 logits (vocab,) after `token_ids`, continuing (and filling) `cache`."""
        ids = self._check_ids(token_ids, cache)
        past, new = cache.length, len(ids)
        isa = library.isa_index(None)
        x = bf16_to_float32(self.embedding[ids])  # (T, hidden)
        cos, sin = self._rope(np.arange(past, past + new, dtype=np.float32))
        for index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm, self.eps)
            attended = self._attention(index, layer, h, cos, sin, cache, isa)
            x = x + self._project(layer.o, _rms_norm(attended, layer.attn_sub_norm, self.eps), isa)
            h = _rms_norm(x, layer.post_attention_norm, self.eps)
            gate = self._project(layer.gate, h, isa)
            hidden = np.square(np.maximum(gate, np.float32(0))) * self._project(layer.up, h, isa)
            x = x + self._project(layer.down, _rms_norm(hidden, layer.ffn_sub_norm, self.eps), isa)
        cache.length = past + new
        last = _rms_norm(x[-1:], self.final_norm, self.eps)
        logits = np.empty((1, self.head.shape[0]), dtype=np.float32)
        rc = self._lib.r3mes_bf16_linear(
            _pointer(last), _pointer(self.head), _pointer(logits), 1, last.shape[1],
            self.head.shape[0], isa, self.threads,
        )  # fmt: skip
        library.check(rc, "bfloat16 head")
        row: np.ndarray = logits[0]
        return row

    @property
    def eps(self) -> float:
        """Epsilon of every RMSNorm."""
        return self.config.rms_norm_eps

    def _check_ids(self, token_ids: Sequence[int], cache: KVBuffer) -> np.ndarray:
        try:
            ids = np.asarray(token_ids)
        except (TypeError, ValueError) as exc:
            raise GenerationError(f"token ids must be a sequence of ints ({exc})") from exc
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise GenerationError("token ids must be a non-empty sequence of ints")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise GenerationError(
                f"token ids must lie in the vocabulary 0..{self.config.vocab_size - 1}"
            )
        if cache.keys.shape[0] != self.config.num_hidden_layers:
            raise GenerationError("the KV buffer was made for another model")
        if cache.length + ids.size > cache.capacity:
            raise GenerationError(
                f"{cache.length} cached + {ids.size} new tokens exceed the KV buffer's "
                f"capacity of {cache.capacity}"
            )
        return ids.astype(np.int64)

    def _project(self, proj: _Projection, x: np.ndarray, isa: int) -> np.ndarray:
        return proj(np.ascontiguousarray(x, dtype=np.float32), self._lib, isa, self.threads)

    def _rope(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        freqs = positions[:, None] * self._inv_freq[None, :]  # (T, D/2)
        emb = np.concatenate([freqs, freqs], axis=-1)
        return np.cos(emb), np.sin(emb)

    def _attention(
        self,
        index: int,
        layer: _Layer,
        h: np.ndarray,
        cos: np.ndarray,
        sin: np.ndarray,
        cache: KVBuffer,
        isa: int,
    ) -> np.ndarray:
        cfg = self.config
        new, dim = h.shape[0], cfg.head_dim
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        q = self._project(layer.q, h, isa).reshape(new, heads, dim).transpose(1, 0, 2)
        k = self._project(layer.k, h, isa).reshape(new, kv_heads, dim).transpose(1, 0, 2)
        v = self._project(layer.v, h, isa).reshape(new, kv_heads, dim).transpose(1, 0, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        past = cache.length
        total = past + new
        cache.keys[index, :, past:total] = k
        cache.values[index, :, past:total] = v
        keys, values = cache.keys[index, :, :total], cache.values[index, :, :total]
        groups = heads // kv_heads  # query head h reads key/value head h // groups
        q = q.reshape(kv_heads, groups * new, dim)
        scores = np.matmul(q, keys.transpose(0, 2, 1)) * np.float32(dim**-0.5)
        scores = scores.reshape(kv_heads, groups, new, total)
        causal = np.arange(total)[None, :] > (past + np.arange(new))[:, None]  # (T, S)
        scores = np.where(causal, np.float32(np.finfo(np.float32).min), scores)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.matmul(probs.reshape(kv_heads, groups * new, total), values)
        rows: np.ndarray = out.reshape(heads, new, dim).transpose(1, 0, 2).reshape(new, -1)
        return rows


def _without_adapter(layers: list[_Layer]) -> list[_Layer]:
    fields = [field for _, field in PROJECTIONS.values()]
    return [
        replace(layer, **{f: replace(getattr(layer, f), lora=None) for f in fields})
        for layer in layers
    ]


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)
    normed: np.ndarray = weight * (x * (np.float32(1.0) / np.sqrt(variance + np.float32(eps))))
    return normed


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """RoPE of x (heads, T, D) with cos/sin (T, D), rotating the two halves as HF does."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out: np.ndarray = x * cos[None] + rotated * sin[None]
    return out


class _Reader:
    """The mapped tensors of one checkpoint, each taken once and checked against its shape."""

    def __init__(self, directory: Path, tensors: dict[str, tuple[str, np.ndarray, Path]]) -> None:
        self.directory = directory
        self.tensors = tensors

    def _take(self, key: str, shape: tuple[int, ...]) -> tuple[str, np.ndarray, Path]:
        if key not in self.tensors:
            raise CheckpointError(self.directory, f"missing tensor {key}")
        code, array, file = self.tensors.pop(key)
        if tuple(array.shape) != shape:
            raise CheckpointError(
                file, f"tensor {key} has shape {tuple(array.shape)}, expected {shape}"
            )
        return code, array, file

    def float32(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """A small float tensor (norm weight, scale) as a float32 copy, checked finite."""
        code, array, file = self._take(key, shape)
        if code not in FLOAT_CODES:
            raise CheckpointError(file, f"tensor {key} has dtype {code}, expected a float")
        values = bf16_to_float32(array) if code == "BF16" else array.astype(np.float32)
        if not np.isfinite(values).all():
            raise CheckpointError(file, f"tensor {key} holds NaN or infinite values")
        return np.ascontiguousarray(values, dtype=np.float32)

    def bf16(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """The embedding / head as bfloat16 bits: the mapped bytes when stored so, else rounded."""
        code, array, file = self._take(key, shape)
        if code not in FLOAT_CODES:
            raise CheckpointError(file, f"tensor {key} has dtype {code}, expected a float")
        flat = array.reshape(-1)
        held = array if code == "BF16" else np.empty(shape, dtype=np.uint16)
        out = held.reshape(-1)
        for start in range(0, flat.size, SCAN_CHUNK):
            chunk = flat[start : start + SCAN_CHUNK]
            values = bf16_to_float32(chunk) if code == "BF16" else chunk.astype(np.float32)
            if not np.isfinite(values).all():
                raise CheckpointError(file, f"tensor {key} holds NaN or infinite values")
            if code != "BF16":
                out[start : start + SCAN_CHUNK] = float32_to_bf16(values)
        return held

    def packed(self, name: str, shape: tuple[int, ...], *, multiplies: bool) -> _Projection:
        """Projection `name` (`shape` = (out, in)) from its packed weight and weight_scale."""
        key = f"{name}.weight"
        if key not in self.tensors:
            raise CheckpointError(self.directory, f"missing tensor {key}")
        code, _, file = self.tensors[key]
        if code != "U8":
            raise CheckpointError(
                file,
                f"tensor {key} is {code}: torch-free decoding reads packed checkpoints; write "
                "one with `r3mes model convert SOURCE DEST --packed`",
            )
        rows = (shape[0] + 3) // 4
        _, packed, _ = self._take(key, (rows, shape[1]))
        flat = packed.reshape(-1)
        for start in range(0, flat.size, SCAN_CHUNK):
            chunk = flat[start : start + SCAN_CHUNK]
            if ((chunk & (chunk >> 1)) & 0x55).any():
                raise CheckpointError(file, f"tensor {key} holds the invalid 2-bit code 3")
        scale = self.float32(f"{name}.weight_scale", self._scale_shape(f"{name}.weight_scale"))
        if not (scale > 0).all():
            raise CheckpointError(file, f"tensor {name}.weight_scale must be positive")
        scale = scale.reshape(1)
        if multiplies:  # r3mes holds the dividing scale (W ~= ternary / scale), as `bitlinear`
            scale = np.float32(1.0) / scale
        return _Projection(np.ascontiguousarray(packed), scale, shape[0])

    def _scale_shape(self, key: str) -> tuple[int, ...]:
        if key not in self.tensors:
            raise CheckpointError(self.directory, f"missing tensor {key}")
        shape = tuple(self.tensors[key][1].shape)
        if math.prod(shape) != 1:
            raise CheckpointError(self.tensors[key][2], f"tensor {key} must be one number")
        return shape

    def discard(self, key: str) -> None:
        self.tensors.pop(key, None)

    def check_all_used(self) -> None:
        if self.tensors:
            leftovers = sorted(self.tensors)
            raise CheckpointError(
                self.tensors[leftovers[0]][2],
                f"unexpected tensors {leftovers[:4]} (another architecture?)",
            )


def _layer_from(
    reader: _Reader, shapes: dict[str, tuple[int, ...]], prefix: str, *, multiplies: bool
) -> _Layer:
    def proj(name: str) -> _Projection:
        full = f"{prefix}.{name}"
        return reader.packed(full, shapes[f"{full}.weight"], multiplies=multiplies)

    def norm(name: str) -> np.ndarray:
        key = f"{prefix}.{name}.weight"
        return reader.float32(key, shapes[key])

    return _Layer(
        q=proj("self_attn.q_proj"),
        k=proj("self_attn.k_proj"),
        v=proj("self_attn.v_proj"),
        o=proj("self_attn.o_proj"),
        gate=proj("mlp.gate_proj"),
        up=proj("mlp.up_proj"),
        down=proj("mlp.down_proj"),
        input_norm=norm("input_layernorm"),
        post_attention_norm=norm("post_attention_layernorm"),
        attn_sub_norm=norm("self_attn.attn_sub_norm"),
        ffn_sub_norm=norm("mlp.ffn_sub_norm"),
    )


def _pick(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """The next token from last-position logits (vocab,), as `generate._pick` decides it."""
    if config.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = logits / np.float32(config.temperature)
    if config.top_k is not None and config.top_k < scaled.size:
        kth = np.partition(scaled, -config.top_k)[-config.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    if config.top_p is not None and config.top_p < 1.0:
        order = np.argsort(-scaled, kind="stable")
        probs = _softmax(scaled[order])
        drop_sorted = (np.cumsum(probs) - probs) >= config.top_p  # keeps at least one
        drop = np.empty_like(drop_sorted)
        drop[order] = drop_sorted
        scaled = np.where(drop, -np.inf, scaled)
    probs = _softmax(scaled).astype(np.float64)
    return int(rng.choice(probs.size, p=probs / probs.sum()))


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max())
    probs: np.ndarray = shifted / shifted.sum()
    return probs


def generate_ids(
    model: TorchFreeModel, prompt_ids: Sequence[int], config: GenerationConfig
) -> Iterator[int]:
    """The next token id per step after `prompt_ids`; the caller decides when to stop.

    The request is checked here, before the iterator is returned (not at its first step).
    """
    prompt = list(prompt_ids)
    if not prompt:
        raise GenerationError("the prompt is empty: pass at least one token")
    if any(isinstance(t, bool) or not isinstance(t, int | np.integer) for t in prompt):
        raise GenerationError("prompt ids must be ints")
    limit = model.config.max_position_embeddings
    if len(prompt) + config.max_new_tokens > limit:
        raise GenerationError(
            f"prompt ({len(prompt)} tokens) plus max_new_tokens ({config.max_new_tokens}) "
            f"exceeds the model's {limit} positions; shorten either"
        )
    if min(prompt) < 0 or max(prompt) >= model.config.vocab_size:
        raise GenerationError(
            f"prompt ids must lie in the vocabulary 0..{model.config.vocab_size - 1}"
        )
    return _steps(model, prompt, config)


def _steps(model: TorchFreeModel, prompt: list[int], config: GenerationConfig) -> Iterator[int]:
    if config.max_new_tokens == 0:
        return
    rng = np.random.default_rng(config.seed)
    cache = model.new_cache(len(prompt) + config.max_new_tokens)
    step = prompt
    for _ in range(config.max_new_tokens):
        token = _pick(model.forward(step, cache), config, rng)
        yield token
        step = [token]


def stream_generate(
    model: TorchFreeModel, tokenizer: Tokenizer, prompt: str, config: GenerationConfig
) -> Iterator[str]:
    """The continuation of `prompt` piece by piece (as `generate.stream_generate`).

    A bad request (prompt too long for max_new_tokens, ...) raises here, before any piece.
    """
    steps = generate_ids(model, encode_prompt(tokenizer, prompt), config)
    return text_pieces(steps, tokenizer, config)
