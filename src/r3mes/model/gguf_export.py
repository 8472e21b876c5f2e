"""Write a r3mes checkpoint as one GGUF file that llama.cpp runs (its `bitnet` architecture).

llama.cpp's `bitnet` architecture (src/models/bitnet.cpp, the model of
microsoft/bitnet-b1.58-2B-4T in convert_hf_to_gguf.py) has r3mes' layout tensor for tensor:
RMSNorm, q/k/v/o with `attn_sub_norm` before o, gate/up/down with `ffn_sub_norm` before
down, NEOX-style rotary embedding (HF's rotate_half), and the LM head tied to the embedding
(llama.cpp multiplies by `token_embd` itself, so untied checkpoints are refused).  One
difference, in llama.cpp's graph and not in the file: its `bitnet` FFN applies SiLU to the
gate (LLM_FFN_SILU, written for 1bitLLM/bitnet_b1_58-3B), where 2B-4T and r3mes apply
squared ReLU (`relu(gate)^2 * up`).  Both are one element-wise op over `intermediate_size`
values per token, so the cost llama.cpp measures is the same; its logits are not r3mes'.

Tensors:

* every ternary projection as TQ2_0 (blocks of 256 weights at 2 bits plus one fp16 scale,
  2.0625 bits a weight) holding exactly the ternary values with the block scale
  `1 / weight_scale` in fp16 (the one rounding, 2**-11 relative at most: the same form as
  llama.cpp's own TQ2_0 conversions of BitNet);  a projection whose input width is not a
  whole number of 256-weight blocks (the bitnet-quick shape's down_proj, 3456 wide) is
  written as F16 instead, which holds ternary x fp16 scale exactly (llama-quantize falls back
  to the lossy Q4_0 there; the lossless Q8_0 was tried and crashed llama-cpp-python 0.3.36 in
  `ggml_backend_amx_mul_mat` on an AMX CPU);
* norms as F32;
* the tied embedding as the checkpoint stores it (`embedding_type="auto"`: BF16 for a bf16
  checkpoint, F16, else F32) or as asked.

`gguf` (llama.cpp's Python package) is imported only when a file is written: install it with
`pip install -e '.[llamacpp]'` (or `.[test]`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from r3mes.model.bitlinear import BitLinear
from r3mes.model.config import BitNetConfig
from r3mes.model.gguf_vocab import GgufExportError, GgufVocab, from_tokenizer_json, synthetic
from r3mes.model.modeling import BitNetForCausalLM, RMSNorm

ARCHITECTURE = "bitnet"
QK_K = 256  # weights per TQ2_0 block
EMBEDDING_TYPES = ("auto", "f32", "f16", "bf16")
VOCAB_KINDS = ("auto", "tokenizer", "synthetic")
FP16_MIN_NORMAL = 2.0**-14
FP16_MAX = 65504.0
_SAFETENSORS_TO_TYPE = {"BF16": "bf16", "F16": "f16"}

# (r3mes module suffix, gguf MODEL_TENSOR member) of each layer's tensors
_LAYER_TENSORS = (
    ("input_layernorm", "ATTN_NORM"),
    ("self_attn.q_proj", "ATTN_Q"),
    ("self_attn.k_proj", "ATTN_K"),
    ("self_attn.v_proj", "ATTN_V"),
    ("self_attn.attn_sub_norm", "ATTN_SUB_NORM"),
    ("self_attn.o_proj", "ATTN_OUT"),
    ("post_attention_layernorm", "FFN_NORM"),
    ("mlp.gate_proj", "FFN_GATE"),
    ("mlp.up_proj", "FFN_UP"),
    ("mlp.ffn_sub_norm", "FFN_SUB_NORM"),
    ("mlp.down_proj", "FFN_DOWN"),
)


@dataclass(frozen=True)
class GgufTensor:
    """One tensor as written: its GGUF name, ggml type and logical shape (rows, cols)."""

    name: str
    """GGUF name, e.g. "blk.0.attn_q.weight"."""
    ggml_type: str
    """ggml type name: "TQ2_0", "F16", "BF16" or "F32"."""
    shape: tuple[int, ...]
    """Logical shape as r3mes holds it: (out_features, in_features) for a matrix."""
    nbytes: int
    """Bytes of its data in the file."""


@dataclass(frozen=True)
class GgufExport:
    """What `export_gguf` wrote."""

    path: Path
    """The GGUF file."""
    tensors: tuple[GgufTensor, ...]
    """Every tensor in file order."""
    vocab_source: str
    """"tokenizer.json" or "synthetic" (see `r3mes.model.gguf_vocab`)."""
    vocab_size: int
    """Tokens in the file's vocabulary (the model's `vocab_size`)."""

    def bytes_by_type(self) -> dict[str, int]:
        """Tensor data bytes per ggml type."""
        totals: dict[str, int] = {}
        for tensor in self.tensors:
            totals[tensor.ggml_type] = totals.get(tensor.ggml_type, 0) + tensor.nbytes
        return totals


def require_gguf() -> Any:
    """llama.cpp's `gguf` package, or a `GgufExportError` saying how to install it."""
    try:
        return importlib.import_module("gguf")
    except ImportError as exc:
        raise GgufExportError(
            "writing GGUF needs llama.cpp's `gguf` package: pip install -e '.[llamacpp]' "
            f"(or pip install gguf==0.19.0) ({exc})"
        ) from exc


def check_exportable(config: BitNetConfig) -> None:
    """Refuse configs llama.cpp's `bitnet` graph cannot hold, before any work is done."""
    if not config.tie_word_embeddings:
        raise GgufExportError(
            "llama.cpp's bitnet architecture ties the LM head to the embedding "
            "(it has no output tensor); this checkpoint has an untied lm_head"
        )
    if config.num_attention_heads * config.head_dim != config.hidden_size:
        raise GgufExportError("llama.cpp's bitnet needs num_attention_heads * head_dim == hidden")


def choose_vocab(config: BitNetConfig, model_dir: Path, kind: str) -> GgufVocab:
    """The vocabulary for `kind`: "auto" (tokenizer.json when the folder has one, else
    synthetic), "tokenizer" (it must be there) or "synthetic"."""
    if kind not in VOCAB_KINDS:
        raise GgufExportError(f"vocab must be one of {VOCAB_KINDS}, got {kind!r}")
    path = model_dir / "tokenizer.json"
    if kind == "synthetic" or (kind == "auto" and not path.is_file()):
        return synthetic(config)
    if not path.is_file():
        raise GgufExportError(f"{path}: missing; export with --vocab synthetic")
    from r3mes.model.tokenizer import MAX_TOKENIZER_BYTES

    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise GgufExportError(f"{path}: larger than {MAX_TOKENIZER_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GgufExportError(f"{path}: not UTF-8 text ({exc})") from exc
    return from_tokenizer_json(text, config)


def stored_embedding_type(model_dir: Path) -> str:
    """ "bf16", "f16" or "f32": how the checkpoint's safetensors store the embedding."""
    from r3mes.model.checkpoint import read_header

    info = read_header(model_dir).get("model.embed_tokens.weight")
    return _SAFETENSORS_TO_TYPE.get(info.dtype, "f32") if info is not None else "f32"


def projection_blocks(ternary: torch.Tensor, scale: float, gguf: Any) -> tuple[np.ndarray, str]:
    """A (out, in) ternary matrix with W = ternary / `scale` as GGUF bytes and their type.

    TQ2_0 when `in` is a multiple of 256, else F16 (see the module docstring); either way
    the values are exactly ternary x fp16(1 / scale).
    """
    step = 1.0 / scale
    if not FP16_MIN_NORMAL <= step <= FP16_MAX:
        raise GgufExportError(
            f"projection scale 1/weight_scale = {step:g} is outside fp16's normal range, "
            "where TQ2_0's fp16 block scale would lose it"
        )
    values = ternary.to(torch.float32).numpy() * np.float32(step)
    cols = ternary.shape[1]
    if cols % QK_K:
        return values.astype(np.float16), "F16"
    return np.asarray(gguf.quants.quantize(values, gguf.GGMLQuantizationType.TQ2_0)), "TQ2_0"


def embedding_data(weight: torch.Tensor, kind: str, gguf: Any) -> tuple[np.ndarray, str]:
    """The embedding (vocab, hidden) as GGUF data of `kind` ("f32", "f16" or "bf16")."""
    values = weight.detach().to(torch.float32).contiguous().numpy()
    if kind == "bf16":
        # a bf16 checkpoint comes back bit for bit: float32 widening was exact
        return np.asarray(gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16)), "BF16"
    if kind == "f16":
        return values.astype(np.float16), "F16"
    return values, "F32"


def model_tensors(
    model: BitNetForCausalLM, embedding_type: str, gguf: Any
) -> list[tuple[str, np.ndarray, str]]:
    """(GGUF name, data, ggml type) of every tensor, in llama.cpp's order (embedding, final
    norm, then each layer)."""
    names = gguf.TENSOR_NAMES
    member = gguf.MODEL_TENSOR
    out: list[tuple[str, np.ndarray, str]] = []
    embedding, kind = embedding_data(model.model.embed_tokens.weight, embedding_type, gguf)
    out.append((names[member.TOKEN_EMBD] + ".weight", embedding, kind))
    out.append((names[member.OUTPUT_NORM] + ".weight", _norm(model.model.norm.weight), "F32"))
    modules = dict(model.named_modules())
    for index in range(model.config.num_hidden_layers):
        for suffix, tensor in _LAYER_TENSORS:
            module = modules[f"model.layers.{index}.{suffix}"]
            name = names[getattr(member, tensor)].format(bid=index) + ".weight"
            if isinstance(module, BitLinear):
                scale = float(module.scale())
                out.append((name, *projection_blocks(module.ternary_weight(), scale, gguf)))
            elif isinstance(module, RMSNorm):
                out.append((name, _norm(module.weight), "F32"))
            else:
                raise GgufExportError(f"unexpected module {type(module).__name__} at {suffix}")
    return out


def _norm(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().to(torch.float32).contiguous().numpy()


def export_gguf(
    model_dir: Path | str,
    out: Path | str,
    *,
    embedding_type: str = "auto",
    vocab: str = "auto",
    name: str | None = None,
) -> GgufExport:
    """Write the checkpoint in `model_dir` as the GGUF file `out` (replaced atomically).

    `embedding_type`: "auto" (as stored), "f32", "f16" or "bf16"; `vocab`: see
    `choose_vocab`; `name`: general.name (default: the checkpoint's recorded name).
    """
    from r3mes.model.checkpoint import load_pretrained
    from r3mes.model.checkpoint_files import load_config, recorded_name

    model_dir, out = Path(model_dir), Path(out)
    if embedding_type not in EMBEDDING_TYPES:
        raise GgufExportError(
            f"embedding type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}"
        )
    if out.is_dir():
        raise GgufExportError(f"{out}: is a folder; give the path of the .gguf file to write")
    gguf = require_gguf()
    config, _ = load_config(model_dir)
    check_exportable(config)
    chosen = choose_vocab(config, model_dir, vocab)
    if embedding_type == "auto":
        embedding_type = stored_embedding_type(model_dir)
    model = load_pretrained(model_dir)
    tensors = model_tensors(model, embedding_type, gguf)
    del model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
    try:
        _write_metadata(writer, gguf, config, chosen, name or recorded_name(model_dir))
        for tensor_name, data, kind in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=getattr(gguf.GGMLQuantizationType, kind))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)  # an existing file at `out` is replaced only by a whole new one
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    written = tuple(
        GgufTensor(n, k, _logical_shape(data, k, gguf), int(data.nbytes)) for n, data, k in tensors
    )
    return GgufExport(out, written, chosen.source, len(chosen.tokens))


def _logical_shape(data: np.ndarray, kind: str, gguf: Any) -> tuple[int, ...]:
    if data.dtype == np.uint8:
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        return tuple(int(n) for n in gguf.quant_shape_from_byte_shape(data.shape, qtype))
    return tuple(int(n) for n in data.shape)


def _write_metadata(
    writer: Any, gguf: Any, config: BitNetConfig, vocab: GgufVocab, name: str
) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_TQ2_0))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(list(vocab.token_types))
    if vocab.model == "llama":
        writer.add_token_scores([0.0] * len(vocab.tokens))
    if vocab.merges:
        writer.add_token_merges(list(vocab.merges))
    for role, index in vocab.special_ids:
        getattr(writer, f"add_{role}_token_id")(index)
    writer.add_add_bos_token(False)  # r3mes encodes without special tokens
