"""The torch-free decoder against the torch model, its checks of untrusted files, its CLI."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from r3mes.cli.model import app
from r3mes.model.checkpoint import load_pretrained, save_pretrained
from r3mes.model.checkpoint_files import bf16_to_float32, float32_to_bf16, map_safetensors
from r3mes.model.decoding import GenerationConfig
from r3mes.model.errors import AdapterError, CheckpointError, GenerationError
from r3mes.model.generate import generate_token_ids
from r3mes.model.kernels import ternary as kernels
from r3mes.model.kv_cache import KVCache
from r3mes.model.lora import (
    LoraConfig,
    apply_lora,
    load_lora_state_dict,
    lora_state_dict,
    set_active_adapter,
)
from r3mes.model.peft_io import save_peft_adapter
from r3mes.model.shipped import SHIPPED_MODEL_NAME, shipped_model_dir
from r3mes.model.tiny import make_tiny_model
from r3mes.model.torchfree import TorchFreeModel, generate_ids

PROMPT = [1, 5, 9, 33, 100, 7, 64, 3]


def _packed(tmp_path: Path, seed: int = 0) -> Path:
    model = make_tiny_model(seed)
    model.freeze_backbone()
    return save_pretrained(model, tmp_path / f"tiny{seed}", packed=True)


def _torch_logits(folder: Path, steps: list[list[int]]) -> list[np.ndarray]:
    net = load_pretrained(folder, embedding_dtype="bfloat16")
    cache = KVCache(net.config.num_hidden_layers)
    out = []
    with torch.no_grad():
        for ids in steps:
            logits = net(torch.tensor([ids]), kv_cache=cache, last_only=True)
            out.append(logits[0, -1].numpy())
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_the_torch_model_step_by_step(tmp_path: Path, seed: int) -> None:
    folder = _packed(tmp_path, seed)
    steps = [PROMPT, [42], [7], [200]]
    expected = _torch_logits(folder, steps)
    model = TorchFreeModel.load(folder)
    cache = model.new_cache(16)
    for ids, want in zip(steps, expected, strict=True):
        got = model.forward(ids, cache)
        assert got.dtype == np.float32 and got.shape == want.shape
        # norms, RoPE and softmax round in numpy: agreement to float32 noise, not to the bit
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert cache.length == len(PROMPT) + 3
    assert cache.nbytes() == 2 * 2 * 2 * 11 * 8 * 4  # layers x (K, V) x kv heads x tokens x D


def test_projections_give_the_torch_paths_bits(tmp_path: Path) -> None:
    folder = _packed(tmp_path)
    net = load_pretrained(folder)
    model = TorchFreeModel.load(folder, threads=2)
    x = torch.randn(5, net.config.hidden_size)
    q_proj = dict(net.bit_linears())["model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        want = q_proj(x).numpy()
    got = model._project(model.layers[0].q, x.numpy(), 0)  # scalar path, 2 threads
    assert np.array_equal(got, want)
    best = kernels.ISAS.index(kernels.best_isa())
    assert np.array_equal(model._project(model.layers[0].q, x.numpy(), best), want)


def test_greedy_decode_of_the_shipped_model_matches_the_torch_path() -> None:
    folder = shipped_model_dir()
    config = GenerationConfig(max_new_tokens=24)
    net = load_pretrained(folder, embedding_dtype="bfloat16")
    want = [int(t[0]) for t in generate_token_ids(net, [PROMPT], config, pad_id=0)]
    got = list(generate_ids(TorchFreeModel.load(folder), PROMPT, config))
    assert got == want


def test_a_decode_never_imports_torch() -> None:
    code = (
        "import json, sys\n"
        "from r3mes.model.decoding import GenerationConfig\n"
        "from r3mes.model.shipped import shipped_model_dir\n"
        "from r3mes.model.tokenizer import load_tokenizer\n"
        "from r3mes.model.torchfree import TorchFreeModel, stream_generate\n"
        "folder = shipped_model_dir()\n"
        "model = TorchFreeModel.load(folder, threads=1)\n"
        "text = ''.join(stream_generate(model, load_tokenizer(folder), 'The river',"
        " GenerationConfig(max_new_tokens=12)))\n"
        "from typer.testing import CliRunner\n"
        "from r3mes.cli.main import app\n"
        "cli = CliRunner().invoke(app, ['model', 'generate', 'The river', '--runtime',"
        " 'torchfree', '--max-new-tokens', '4'])\n"
        "print(json.dumps({'text': text, 'cli': cli.output, 'code': cli.exit_code,"
        " 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch"] is False  # neither the library call nor the CLI imported it
    assert result["text"]
    assert result["code"] == 0 and result["cli"].startswith("The river")


def test_sampling_repeats_with_a_seed_and_narrows_to_greedy(tmp_path: Path) -> None:
    model = TorchFreeModel.load(_packed(tmp_path))
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.5, seed=7)
    first = list(generate_ids(model, PROMPT, sampled))
    assert first == list(generate_ids(model, PROMPT, sampled))
    greedy = list(generate_ids(model, PROMPT, GenerationConfig(max_new_tokens=12)))
    assert first != greedy  # at temperature 1.5 on a random model, 12 draws are not all argmax
    for narrow in ({"top_k": 1}, {"top_p": 1e-6}):
        config = GenerationConfig(max_new_tokens=12, temperature=1.5, seed=3, **narrow)
        assert list(generate_ids(model, PROMPT, config)) == greedy


def test_bad_requests_are_refused_before_any_work(tmp_path: Path) -> None:
    model = TorchFreeModel.load(_packed(tmp_path))
    limit = model.config.max_position_embeddings
    with pytest.raises(GenerationError, match="exceeds the model's"):
        generate_ids(model, PROMPT, GenerationConfig(max_new_tokens=limit))
    with pytest.raises(GenerationError, match="empty"):
        generate_ids(model, [], GenerationConfig())
    with pytest.raises(GenerationError, match="vocabulary"):
        generate_ids(model, [1, 256], GenerationConfig())
    for bad_ids in (["a"], [1.5], [True]):
        with pytest.raises(GenerationError, match="must be ints"):
            generate_ids(model, bad_ids, GenerationConfig())  # type: ignore[arg-type]
    cache = model.new_cache(4)
    for bad in ([], [-1], [256], [[1, 2]], ["a"], [True]):
        with pytest.raises(GenerationError):
            model.forward(bad, cache)  # type: ignore[arg-type]
    with pytest.raises(GenerationError, match="capacity"):
        model.forward([1, 2, 3, 4, 5], cache)
    assert cache.length == 0  # nothing was written by the refused calls
    with pytest.raises(GenerationError, match="positions"):
        model.new_cache(limit + 1)


def test_float_master_checkpoints_are_refused_with_the_fix(tmp_path: Path) -> None:
    folder = save_pretrained(make_tiny_model(0), tmp_path / "master", packed=False)
    with pytest.raises(CheckpointError, match="r3mes model convert"):
        TorchFreeModel.load(folder)


def _rewrite(path: Path, header: dict[str, object], data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _header(path: Path) -> tuple[dict[str, object], bytes]:
    blob = path.read_bytes()
    size = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + size]), blob[8 + size :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda h, d: (h, d[:100]), "past the end"),
        (
            lambda h, d: ({**h, "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, d),
            "overlap",
        ),  # fmt: skip
        (
            lambda h, d: ({**h, "x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, d),
            "unsupported dtype",
        ),  # fmt: skip
        (
            lambda h, d: ({**h, "x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, d),
            "does not hold",
        ),  # fmt: skip
        (
            lambda h, d: ({**h, "x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, d),
            "malformed shape",
        ),  # fmt: skip
        (
            lambda h, d: ({**h, "x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, d),
            "malformed data_offsets",
        ),  # fmt: skip
        (lambda h, d: ({**h, "x": [1]}, d), "not an object"),
    ],
)
def test_damaged_safetensors_are_refused_and_left_as_they_were(  # type: ignore[no-untyped-def]
    tmp_path: Path, damage, message: str
) -> None:
    folder = _packed(tmp_path)
    weights = folder / "model.safetensors"
    header, data = _header(weights)
    _rewrite(weights, *damage(header, data))
    before = weights.read_bytes()
    with pytest.raises(CheckpointError, match=message):
        TorchFreeModel.load(folder)
    assert weights.read_bytes() == before


def test_header_length_and_json_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="truncated"):
        map_safetensors(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        map_safetensors(path)
    path.write_bytes(struct.pack("<Q", 3) + b"{{{")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        map_safetensors(path)
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        map_safetensors(path)


def test_a_file_of_empty_tensors_maps(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    _rewrite(path, {"e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}}, b"")
    ((code, array),) = map_safetensors(path).values()
    assert code == "F32" and array.shape == (0, 3) and array.dtype == np.float32


def _edit_tensor(folder: Path, key: str, edit) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    edit(state, key)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("key", "edit", "message"),
    [
        ("model.layers.0.mlp.up_proj.weight", lambda s, k: s[k].fill_(0xFF), "invalid 2-bit"),
        (
            "model.layers.1.input_layernorm.weight",
            lambda s, k: s[k].fill_(float("nan")),
            "NaN or infinite",
        ),  # fmt: skip
        (
            "model.embed_tokens.weight",
            lambda s, k: s[k].view(-1)[77].fill_(float("inf")),
            "NaN or infinite",
        ),  # fmt: skip
        (
            "model.layers.0.self_attn.k_proj.weight_scale",
            lambda s, k: s[k].fill_(-1.0),
            "positive",
        ),  # fmt: skip
        ("model.norm.weight", lambda s, k: s.pop(k), "missing tensor model.norm.weight"),
        ("model.norm.weight", lambda s, k: s.update(extra=torch.ones(2)), "unexpected tensors"),
        ("model.norm.weight", lambda s, k: s.update({k: torch.ones(3)}), "has shape"),
    ],
)
def test_bad_tensors_are_refused(  # type: ignore[no-untyped-def]
    tmp_path: Path, key: str, edit, message: str
) -> None:
    folder = _packed(tmp_path)
    _edit_tensor(folder, key, edit)
    with pytest.raises(CheckpointError, match=message):
        TorchFreeModel.load(folder)


def _lora_model(folder: Path, targets: tuple[str, ...], seed: int = 0):  # type: ignore[no-untyped-def]
    """The packed model in `folder` with an adapter "x" of non-zero A and B on `targets`."""
    net = load_pretrained(folder, embedding_dtype="bfloat16")
    config = LoraConfig(r=4, alpha=8, target_modules=targets)
    apply_lora(net, config, name="x", generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    state = {
        k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in lora_state_dict(net, "x").items()
    }
    load_lora_state_dict(net, state, "x")
    return net, config, state


def _shipped_adapter(tmp_path: Path) -> Path:
    _, config, state = _lora_model(shipped_model_dir(), ("q_proj", "v_proj", "down_proj"))
    return save_peft_adapter(tmp_path / "adapter", state, config, SHIPPED_MODEL_NAME)


def test_an_adapter_gives_the_torch_models_logits_and_detaches(tmp_path: Path) -> None:
    folder = _packed(tmp_path)
    net, config, state = _lora_model(
        folder, ("q_proj", "k_proj", "o_proj", "gate_proj", "down_proj")
    )
    adapter = save_peft_adapter(tmp_path / "a", state, config, "tiny")
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        want = net(ids)[0, -1].numpy()
        set_active_adapter(net, None)
        base = net(ids)[0, -1].numpy()
    model = TorchFreeModel.load(folder)
    assert model.attach_adapter(adapter, expected_base="tiny") == config
    got = model.forward(PROMPT, model.new_cache(len(PROMPT)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(want, base, atol=1e-3)  # the adapter changes the logits
    model.detach_adapter()
    np.testing.assert_allclose(
        model.forward(PROMPT, model.new_cache(8)), base, rtol=1e-5, atol=1e-5
    )
    # another adapter replaces the first entirely, projections it does not adapt included
    other, other_config, other_state = _lora_model(folder, ("v_proj",), seed=5)
    model.attach_adapter(adapter)
    model.attach_adapter(save_peft_adapter(tmp_path / "b", other_state, other_config, "tiny"))
    with torch.no_grad():
        want = other(ids)[0, -1].numpy()
    got = model.forward(PROMPT, model.new_cache(8))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bad_adapters_are_refused_and_leave_the_model_as_it_was(tmp_path: Path) -> None:
    folder = _packed(tmp_path)
    model = TorchFreeModel.load(folder)
    _, config, state = _lora_model(folder, ("q_proj", "v_proj"))
    good = save_peft_adapter(tmp_path / "good", state, config, "tiny")
    model.attach_adapter(good)
    before = model.forward(PROMPT, model.new_cache(8))
    with pytest.raises(AdapterError, match="made for base model 'tiny'"):
        model.attach_adapter(good, expected_base="another")
    one = LoraConfig(r=4, alpha=8, target_modules=("q_proj",))
    wide = {k: v for k, v in state.items() if "q_proj" in k}
    key = next(k for k in wide if "lora_A" in k)
    wide[key] = torch.ones(4, 48)  # the input width of another model
    with pytest.raises(AdapterError, match="LoRA shapes"):
        model.attach_adapter(save_peft_adapter(tmp_path / "wide", wide, one, "t"))
    partial = {k: v for k, v in state.items() if "layers.1." not in k}
    with pytest.raises(AdapterError, match="missing LoRA weights"):
        model.attach_adapter(save_peft_adapter(tmp_path / "partial", partial, config, "t"))
    extra = {
        **state,
        "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(4, 32),
    }
    with pytest.raises(AdapterError, match="unexpected adapter tensors"):
        model.attach_adapter(save_peft_adapter(tmp_path / "extra", extra, config, "t"))
    broken = save_peft_adapter(tmp_path / "broken", state, config, "t")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(AdapterError, match="corrupt or truncated"):
        model.attach_adapter(broken)
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "use_dora": true}')
    with pytest.raises(AdapterError, match="use_dora"):
        model.attach_adapter(broken)
    assert np.array_equal(model.forward(PROMPT, model.new_cache(8)), before)


def test_bfloat16_conversions_match_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.cat(
        [
            torch.randn(10_000, generator=gen) * 100,
            torch.tensor([0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.0e38, -1e-40, 65504.0]),
        ]
    )  # ties to even in both directions, a value that rounds to inf, a subnormal
    want = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = float32_to_bf16(values.numpy())
    assert np.array_equal(got, want)
    widened = torch.from_numpy(bf16_to_float32(got).copy())
    assert torch.equal(widened, values.to(torch.bfloat16).float())


@pytest.mark.parametrize("with_adapter", [False, True])
def test_cli_generates_the_same_text_with_either_runtime(
    tmp_path: Path, with_adapter: bool
) -> None:
    runner = CliRunner()
    extra = ["--adapter", str(_shipped_adapter(tmp_path))] if with_adapter else []
    texts = []
    for runtime in ("torch", "torchfree"):
        result = runner.invoke(
            app,
            ["generate", "The river", "--max-new-tokens", "16", "--runtime", runtime,
             "--embedding-dtype", "bfloat16", "--threads", "1", *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        texts.append(result.output)
    assert texts[0] == texts[1]
    assert texts[0].startswith("The river") and len(texts[0]) > len("The river\n")


def test_cli_torchfree_refuses_what_it_cannot_do() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "hi", "--runtime", "torchfree", "--device", "cuda"])
    assert result.exit_code != 0 and "CPU" in result.output
    result = runner.invoke(app, ["generate", "hi", "--runtime", "jax"])
    assert result.exit_code != 0 and "torchfree" in result.output


def test_without_the_native_library_it_says_what_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from r3mes.model.kernels import library

    folder = _packed(tmp_path)
    monkeypatch.setattr(library, "_library_path", lambda: None)
    library._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="unavailable"):
            with pytest.raises(library.KernelUnavailable, match="use the torch runtime"):
                TorchFreeModel.load(folder)
    finally:
        library._library.cache_clear()
