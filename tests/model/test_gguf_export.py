"""GGUF export: what llama.cpp reads back is exactly the checkpoint (gguf.GGUFReader), the
vocabulary is the model's size, bad input is refused. That llama.cpp runs the file and
agrees with r3mes is checked by `benchmarks/llamacpp_e2e.py` (it stops unless llama.cpp's
logits match r3mes' with a SiLU feed-forward): llama-cpp-python compiles llama.cpp for an
hour, so it is not in the test extras, and a test needing it would be skipped in CI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from r3mes.cli.model import app
from r3mes.model.bitlinear import BitLinear
from r3mes.model.checkpoint import load_pretrained, save_pretrained
from r3mes.model.gguf_export import export_gguf
from r3mes.model.gguf_vocab import BYTE, CONTROL, UNUSED, GgufExportError, synthetic
from r3mes.model.synthetic import write_random_checkpoint
from r3mes.model.tiny import make_tiny_model, tiny_config
from r3mes.model.tokenizer import train_bpe_tokenizer

# hidden 256: q/k/v/o/gate/up are whole TQ2_0 blocks; intermediate 320: down_proj is not (F16)
SHAPE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 320,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 300,
}
PROJECTIONS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORMS = {
    "input_layernorm": "attn_norm",
    "self_attn.attn_sub_norm": "attn_sub_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.ffn_sub_norm": "ffn_sub_norm",
}
TEXT = ["hello world, hello model. the quick brown fox jumps over the lazy dog. " * 4] * 8


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A packed tiny checkpoint of TQ2_0-friendly widths with r3mes' own tokenizer."""
    model = make_tiny_model(0, **SHAPE)
    with torch.no_grad():  # norms away from one, so a swapped norm would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
    save_pretrained(model, tmp_path / "m", packed=True)
    train_bpe_tokenizer(TEXT, 300).save(tmp_path / "m")
    return tmp_path / "m"


def _fields(reader: gguf.GGUFReader) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensors(reader: gguf.GGUFReader) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (ggml type name, values as float32 in r3mes' (rows, cols) order)."""
    out = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        out[tensor.name] = (tensor.tensor_type.name, np.asarray(values, dtype=np.float32))
    return out


def _expected_projection(layer: BitLinear) -> np.ndarray:
    """ternary x fp16(1 / weight_scale): the only rounding the export makes."""
    step = np.float32(1.0 / float(layer.scale())).astype(np.float16).astype(np.float32)
    return layer.ternary_weight().numpy().astype(np.float32) * step


def test_tensors_read_back_exactly(folder: Path, tmp_path: Path) -> None:
    result = export_gguf(folder, tmp_path / "m.gguf")
    model = load_pretrained(folder)
    config = model.config
    tensors = _tensors(gguf.GGUFReader(tmp_path / "m.gguf"))
    expected_names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{short}.weight"
        for i in range(config.num_hidden_layers)
        for short in [*PROJECTIONS.values(), *NORMS.values()]
    }
    assert set(tensors) == expected_names
    assert [t.name for t in result.tensors] == [
        t.name for t in gguf.GGUFReader(result.path).tensors
    ]
    modules = dict(model.named_modules())
    for i in range(config.num_hidden_layers):
        for path, short in PROJECTIONS.items():
            layer = modules[f"model.layers.{i}.{path}"]
            assert isinstance(layer, BitLinear)
            kind, values = tensors[f"blk.{i}.{short}.weight"]
            assert kind == ("F16" if short == "ffn_down" else "TQ2_0")
            np.testing.assert_array_equal(values, _expected_projection(layer))
        for path, short in NORMS.items():
            kind, values = tensors[f"blk.{i}.{short}.weight"]
            weight = modules[f"model.layers.{i}.{path}"].weight
            assert kind == "F32"
            np.testing.assert_array_equal(values, weight.detach().numpy())
    kind, embedding = tensors["token_embd.weight"]
    assert kind == "F32"  # save_pretrained stores it float32: "auto" keeps that
    np.testing.assert_array_equal(embedding, model.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(
        tensors["output_norm.weight"][1], model.model.norm.weight.detach()
    )
    sizes = result.bytes_by_type()
    packed = sum(66 * m.out_features * m.in_features // 256 for p, m in model.bit_linears()
                 if not p.endswith("down_proj"))  # fmt: skip
    assert sizes["TQ2_0"] == packed  # 66 bytes per 256 weights: 2.0625 bits a weight


def test_metadata_and_tokenizer_vocab(folder: Path, tmp_path: Path) -> None:
    result = export_gguf(folder, tmp_path / "m.gguf", name="tiny")
    fields = _fields(gguf.GGUFReader(result.path))
    config = tiny_config(**SHAPE)
    assert fields["general.architecture"] == "bitnet"
    assert fields["general.name"] == "tiny"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_TQ2_0
    assert fields["bitnet.block_count"] == config.num_hidden_layers
    assert fields["bitnet.embedding_length"] == config.hidden_size
    assert fields["bitnet.feed_forward_length"] == config.intermediate_size
    assert fields["bitnet.attention.head_count"] == config.num_attention_heads
    assert fields["bitnet.attention.head_count_kv"] == config.num_key_value_heads
    assert fields["bitnet.rope.dimension_count"] == config.head_dim
    assert fields["bitnet.rope.freq_base"] == pytest.approx(config.rope_theta)
    assert fields["bitnet.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    assert fields["bitnet.context_length"] == config.max_position_embeddings
    assert fields["bitnet.vocab_size"] == config.vocab_size
    # r3mes' byte-level BPE as llama.cpp's gpt2 model with GPT-2's pre-tokenizer
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == config.vocab_size == result.vocab_size
    for text, index in data["model"]["vocab"].items():
        assert tokens[index] == text
    assert [tokens[i] for i in (0, 1, 2)] == ["<pad>", "<s>", "</s>"]
    assert [fields["tokenizer.ggml.token_type"][i] for i in (0, 1, 2)] == [CONTROL] * 3
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    assert fields["tokenizer.ggml.merges"] == merges
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert fields["tokenizer.ggml.add_bos_token"] is False


def test_random_checkpoint_keeps_bf16_embedding_and_gets_synthetic_vocab(tmp_path: Path) -> None:
    config = tiny_config(**SHAPE, bos_token_id=None, eos_token_id=299, pad_token_id=None)
    folder = write_random_checkpoint(config, tmp_path / "r", seed=3)
    result = export_gguf(folder, tmp_path / "r.gguf")
    reader = gguf.GGUFReader(result.path)
    tensors, fields = _tensors(reader), _fields(reader)
    kind, embedding = tensors["token_embd.weight"]
    assert kind == "BF16" and result.vocab_source == "synthetic"
    model = load_pretrained(folder)  # widens the stored bf16 exactly
    np.testing.assert_array_equal(embedding, model.model.embed_tokens.weight.detach().numpy())
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert fields["tokenizer.ggml.model"] == "llama" and len(tokens) == 300
    assert tokens[299] == "</s>" and fields["tokenizer.ggml.eos_token_id"] == 299
    assert [t for t, k in zip(tokens, types, strict=True) if k == BYTE] == [
        f"<0x{b:02X}>" for b in range(256)
    ]
    assert sum(k == UNUSED for k in types) == 300 - 256 - 3  # eos, bos and unknown
    assert len(set(tokens)) == len(tokens)
    f32 = export_gguf(folder, tmp_path / "f.gguf", embedding_type="f32")
    assert _tensors(gguf.GGUFReader(f32.path))["token_embd.weight"][0] == "F32"


def test_bad_input_is_refused(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.gguf"
    with pytest.raises(GgufExportError, match="embedding type"):
        export_gguf(folder, out, embedding_type="f8")
    with pytest.raises(GgufExportError, match="is a folder"):
        export_gguf(folder, tmp_path)
    with pytest.raises(GgufExportError, match="vocab must be"):
        export_gguf(folder, out, vocab="words")
    untied = tmp_path / "untied"
    save_pretrained(make_tiny_model(0, **SHAPE, tie_word_embeddings=False), untied, packed=True)
    with pytest.raises(GgufExportError, match="untied"):
        export_gguf(untied, out)
    no_tokenizer = tmp_path / "bare"
    save_pretrained(make_tiny_model(0, **SHAPE), no_tokenizer, packed=True)
    with pytest.raises(GgufExportError, match="tokenizer.json: missing"):
        export_gguf(no_tokenizer, out, vocab="tokenizer")
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["add_prefix_space"] = True
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(GgufExportError, match="prefix space"):
        export_gguf(folder, out)
    with pytest.raises(GgufExportError, match="too small"):
        synthetic(tiny_config(vocab_size=259))
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if it were not installed
    with pytest.raises(GgufExportError, match=r"pip install -e '\.\[llamacpp\]'"):
        export_gguf(folder, out, vocab="synthetic")
    assert not out.exists() and not (tmp_path / ".x.gguf.tmp").exists()


def test_cli_export(folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["export-gguf", "--model", str(folder), "--out", str(tmp_path / "c.gguf")]
    )
    assert result.exit_code == 0, result.output
    assert "tokenizer.json vocabulary of 300 tokens" in " ".join(result.output.split())
    assert (
        gguf.GGUFReader(tmp_path / "c.gguf").fields["general.architecture"].contents() == "bitnet"
    )


def test_a_failed_write_keeps_the_old_file(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"the previous export")

    def disk_full(self: Any, **_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_gguf(folder, out)
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.gguf"]
