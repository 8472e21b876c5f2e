import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import model.hf_reference as hf  # noqa: E402

from r3mes.model.checkpoint import load_pretrained, save_pretrained  # noqa: E402
from r3mes.model.errors import CheckpointError  # noqa: E402
from r3mes.model.tiny import make_tiny_model  # noqa: E402

torch.set_num_threads(1)
IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 100, 127], [1, 8, 8, 8, 64, 3, 4, 5]])


@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers_online_quantization(tmp_path: Path, tied: bool) -> None:
    reference = hf.random_hf_model(0, tie_word_embeddings=tied)
    hf.save(reference, tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.config.tie_word_embeddings is tied
    expected = hf.logits(hf.quantize_online(reference), IDS)
    assert torch.allclose(ours(IDS), expected, atol=1e-4)


def test_bf16_master_weights_load(tmp_path: Path) -> None:
    reference = hf.random_hf_model(1).to(torch.bfloat16)
    hf.save(reference, tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.model.embed_tokens.weight.dtype == torch.float32
    expected = hf.logits(hf.quantize_online(reference.float()), IDS)
    assert torch.allclose(ours(IDS), expected, atol=1e-4)


def test_packed_format_matches_transformers_bitlinear(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    reference = hf.random_hf_model(2)
    hf.save(reference, tmp_path / "master")
    ours = load_pretrained(tmp_path / "master")
    save_pretrained(ours, tmp_path / "packed", packed=True)
    state = load_file(tmp_path / "packed" / "model.safetensors")
    q = state["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == torch.uint8 and q.shape == (8, 32)
    assert state["model.layers.0.self_attn.q_proj.weight_scale"].shape == (1,)
    config = json.loads((tmp_path / "packed" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitnet"
    hf_packed = hf.packed_hf_model(reference.config, state)
    assert torch.allclose(hf.logits(hf_packed, IDS), ours(IDS), atol=1e-4)
    # and our loader reads the packed folder back to the same model, frozen
    again = load_pretrained(tmp_path / "packed")
    assert all(m.frozen for _, m in again.bit_linears())
    assert torch.allclose(again(IDS), ours(IDS), atol=1e-5)


def test_packed_master_round_trip_is_exact(tmp_path: Path) -> None:
    model = make_tiny_model(3)
    model.freeze_backbone()
    ids = torch.randint(0, 256, (2, 7))
    save_pretrained(model, tmp_path / "master", packed=False)
    master = load_pretrained(tmp_path / "master")
    assert not any(m.frozen for _, m in master.bit_linears())
    for (_, a), (_, b) in zip(master.bit_linears(), model.bit_linears(), strict=True):
        assert torch.equal(a.ternary_weight(), b.ternary_weight())
        assert torch.allclose(a.scale(), b.scale(), rtol=1e-6)
    # scales agree to float rounding, which can flip an 8-bit activation code now and then
    assert torch.allclose(master(ids), model(ids), atol=1e-2)
    save_pretrained(master, tmp_path / "packed", packed=True)
    packed = load_pretrained(tmp_path / "packed")
    for (_, a), (_, b) in zip(packed.bit_linears(), model.bit_linears(), strict=True):
        assert torch.equal(a.ternary_weight(), b.ternary_weight())
    size = (tmp_path / "packed" / "model.safetensors").stat().st_size
    assert size < (tmp_path / "master" / "model.safetensors").stat().st_size


def _folder(tmp_path: Path) -> Path:
    save_pretrained(make_tiny_model(0), tmp_path / "ckpt", packed=True)
    return tmp_path / "ckpt"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "model.safetensors").write_bytes(
                (d / "model.safetensors").read_bytes()[:300]
            ),
            "corrupt or truncated",
        ),
        (lambda d: (d / "model.safetensors").unlink(), "missing"),
        (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
        (lambda d: (d / "config.json").unlink(), "config.json"),
    ],
)
def test_damaged_checkpoints_raise_clear_errors(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    folder = _folder(tmp_path)
    damage(folder)
    before = _snapshot(folder)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(folder)
    assert _snapshot(folder) == before


def test_config_problems_name_the_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    data = json.loads((folder / "config.json").read_text())
    data["mystery_option"] = 1
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown config key 'mystery_option'"):
        load_pretrained(folder)


def test_wrong_shapes_and_extra_tensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _folder(tmp_path)
    state = load_file(folder / "model.safetensors")
    wrong = dict(state)
    wrong["model.norm.weight"] = torch.ones(7)
    save_file(wrong, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight has shape \(7,\)"):
        load_pretrained(folder)
    wrong = dict(state)
    wrong["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 32, dtype=torch.uint8)
    save_file(wrong, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="up_proj.weight"):
        load_pretrained(folder)
    extra = dict(state)
    extra["vision_tower.weight"] = torch.zeros(2)
    save_file(extra, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        load_pretrained(folder)
    missing = {k: v for k, v in state.items() if k != "model.norm.weight"}
    save_file(missing, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor model.norm.weight"):
        load_pretrained(folder)
    nan = dict(state)
    nan["model.norm.weight"] = torch.full_like(state["model.norm.weight"], float("nan"))
    save_file(nan, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        load_pretrained(folder)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a folder"):
        load_pretrained(tmp_path / "nope")


def test_bf16_packed_and_sharded_checkpoints_load(tmp_path: Path) -> None:
    """The microsoft/bitnet-b1.58-2B-4T shape: bf16 scales and embeddings, sharded files."""
    from safetensors.torch import load_file, save_file

    model = make_tiny_model(4)
    model.freeze_backbone()
    folder = _folder(tmp_path)
    save_pretrained(model, folder, packed=True)
    state = load_file(folder / "model.safetensors")
    state = {k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}
    keys = sorted(state)
    first, second = keys[: len(keys) // 2], keys[len(keys) // 2 :]
    (folder / "model.safetensors").unlink()
    save_file({k: state[k] for k in first}, folder / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in second}, folder / "model-00002-of-00002.safetensors")
    weight_map = dict.fromkeys(first, "model-00001-of-00002.safetensors")
    weight_map.update(dict.fromkeys(second, "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_pretrained(folder)
    for (_, a), (_, b) in zip(loaded.bit_linears(), model.bit_linears(), strict=True):
        assert torch.equal(a.ternary_weight(), b.ternary_weight())
    ids = torch.randint(0, 256, (1, 6))
    assert torch.allclose(loaded(ids), model(ids), atol=5e-2)
    weight_map[first[0]] = "../elsewhere.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="plain file names"):
        load_pretrained(folder)


def test_huge_config_is_refused_from_the_header_before_allocating(tmp_path: Path) -> None:
    """vocab_size 2e9 would need 256 GB; the header check refuses it without allocating."""
    folder = _folder(tmp_path)
    data = json.loads((folder / "config.json").read_text())
    data["vocab_size"] = 2_000_000_000
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"embed_tokens\.weight has shape \(256, 32\)"):
        load_pretrained(folder)


def test_save_refuses_a_file_as_destination(tmp_path: Path) -> None:
    target = tmp_path / "a_file"
    target.write_text("keep me")
    with pytest.raises(CheckpointError, match="not a folder"):
        save_pretrained(make_tiny_model(0), target, packed=True)
    assert target.read_text() == "keep me"


_SAVE_SCRIPT = """
import hashlib, sys
from r3mes.model.checkpoint import save_pretrained
from r3mes.model.tiny import make_tiny_model
model = make_tiny_model(7)
model.freeze_backbone()
for packed in (True, False):
    kind = "packed" if packed else "master"
    folder = save_pretrained(model, sys.argv[1] + "/" + kind, packed=packed)
    for name in ("model.safetensors", "config.json"):
        print(hashlib.sha256((folder / name).read_bytes()).hexdigest())
"""


def test_saved_bytes_are_identical_across_fresh_processes(tmp_path: Path) -> None:
    """The protocol names the base model by content id: saving must not depend on the process."""
    import subprocess

    digests = []
    for run in ("one", "two"):
        done = subprocess.run(
            [sys.executable, "-c", _SAVE_SCRIPT, str(tmp_path / run)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        digests.append(done.stdout.split())
    assert len(digests[0]) == 4 and digests[0] == digests[1]
    # safetensors writes its metadata map in hash order; one key leaves no order to vary
    from safetensors import safe_open

    with safe_open(str(tmp_path / "one" / "packed" / "model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}


def test_loading_a_checkpoint_does_not_import_the_compiler(tmp_path: Path) -> None:
    """Session 5: building the empty model on the meta device ran the weight initialisers,
    whose meta decomposition imports torch._dynamo and libtriton (67 MiB of resident code
    pages in every process that loads a checkpoint); a fresh process must not import them,
    and initialisers work as before afterwards, on this thread and another."""
    import subprocess
    import textwrap

    save_pretrained(make_tiny_model(0), tmp_path / "ckpt", packed=True)
    code = textwrap.dedent(
        f"""
        import sys, threading, torch
        from r3mes.model.checkpoint import load_pretrained
        drawn = []
        def init():
            drawn.append(torch.nn.init.normal_(torch.zeros(1000), 0.0, 1.0).std().item())
        t = threading.Thread(target=init)
        model = load_pretrained({str(tmp_path / "ckpt")!r})
        t.start(); t.join()
        assert model(torch.tensor([[1, 2, 3]])).isfinite().all()
        assert drawn and drawn[0] > 0.5, drawn
        assert torch.nn.init.normal_(torch.zeros(1000)).std().item() > 0.5
        print(sorted(m for m in ("torch._dynamo", "triton") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
