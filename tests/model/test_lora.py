from typing import Literal

import pytest
import torch

from r3mes.model.errors import AdapterError
from r3mes.model.lora import (
    LoraConfig,
    LoraLinear,
    adapter_names,
    apply_lora,
    load_lora_state_dict,
    lora_state_dict,
    mark_only_lora_as_trainable,
    remove_adapter,
    set_active_adapter,
    set_adapter_rows,
)
from r3mes.model.tiny import make_tiny_model

torch.set_num_threads(1)
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _lora_weight(layer: LoraLinear, which: Literal["A", "B"], name: str) -> torch.Tensor:
    """Weight of adapter `name`'s `lora_A` or `lora_B` linear (a typed `ModuleDict` lookup)."""
    linear = (layer.lora_A if which == "A" else layer.lora_B)[name]
    assert isinstance(linear, torch.nn.Linear)
    return linear.weight


def _randomize(model: torch.nn.Module, name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear) and name in module.lora_B:
                w = _lora_weight(module, "B", name)
                w.copy_(torch.randn(w.shape, generator=g) * 0.1)


def test_new_adapter_is_a_no_op_and_keys_follow_peft() -> None:
    model = make_tiny_model(0)
    model.freeze_backbone()
    ids = torch.randint(0, 256, (2, 5))
    base = model(ids)
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=ALL))
    assert torch.equal(model(ids), base)
    state = lora_state_dict(model, "default")
    assert len(state) == 2 * 7 * 2
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert state[key].shape == (4, 32)
    assert state[key.replace("lora_A", "lora_B")].shape == (32, 4)
    assert state["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (4, 64)


def test_only_lora_trains_and_backbone_stays_packed() -> None:
    model = make_tiny_model(0)
    model.freeze_backbone()
    apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj")))
    mark_only_lora_as_trainable(model, "default")
    packed_before = {n: b.clone() for n, b in model.named_buffers()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(0, 256, (2, 6))
    before = model(ids).detach()
    loss = model(ids).logsumexp(-1).mean() - model(ids)[..., 5].mean()
    loss.backward()
    opt.step()
    assert not torch.allclose(model(ids), before)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, packed_before[name]), name


def test_scaling_is_alpha_over_r() -> None:
    layer_model = make_tiny_model(0)
    apply_lora(layer_model, LoraConfig(r=4, alpha=16, target_modules=("q_proj",)))
    q = layer_model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(q, LoraLinear)
    _randomize(layer_model, "default", 0)
    x = torch.randn(1, 3, 32)
    a, b = _lora_weight(q, "A", "default"), _lora_weight(q, "B", "default")
    expected = q.base_layer(x) + (x @ a.T @ b.T) * 4.0
    assert torch.allclose(q(x), expected, atol=1e-5)


def test_several_adapters_and_per_row_selection() -> None:
    model = make_tiny_model(1)
    model.freeze_backbone()
    apply_lora(model, LoraConfig(r=2, alpha=2, target_modules=ALL), name="a")
    apply_lora(model, LoraConfig(r=6, alpha=3, target_modules=("q_proj", "down_proj")), name="b")
    _randomize(model, "a", 1)
    _randomize(model, "b", 2)
    assert adapter_names(model) == ["a", "b"]
    ids = torch.randint(0, 256, (3, 5))
    expected = []
    for row, name in enumerate(["b", None, "a"]):
        set_active_adapter(model, name)
        expected.append(model(ids[row : row + 1]))
    set_adapter_rows(model, ["b", None, "a"])
    mixed = model(ids)
    assert torch.allclose(mixed, torch.cat(expected), atol=1e-5)
    with pytest.raises(AdapterError, match="rows"):
        model(ids[:2])
    with pytest.raises(AdapterError, match="unknown adapters"):
        set_adapter_rows(model, ["zzz"])


def test_remove_adapter_unwraps_and_restores_base() -> None:
    model = make_tiny_model(0)
    ids = torch.randint(0, 256, (1, 4))
    base = model(ids)
    apply_lora(model, LoraConfig(r=2, alpha=2, target_modules=("v_proj",)), name="x")
    _randomize(model, "x", 0)
    assert not torch.allclose(model(ids), base)
    remove_adapter(model, "x")
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert torch.equal(model(ids), base)
    with pytest.raises(AdapterError, match="no adapter"):
        remove_adapter(model, "x")


def test_state_dict_round_trip_and_errors() -> None:
    config = LoraConfig(r=3, alpha=6, target_modules=("k_proj", "up_proj"))
    src = make_tiny_model(0)
    apply_lora(src, config, generator=torch.Generator().manual_seed(5))
    _randomize(src, "default", 3)
    other = make_tiny_model(0)
    apply_lora(other, LoraConfig(r=3, alpha=6, target_modules=("q_proj",)), name="other")
    state = lora_state_dict(src, "default")
    with pytest.raises(AdapterError, match="missing"):
        load_lora_state_dict(other, state, "other")
    load_ok = make_tiny_model(0)
    apply_lora(load_ok, config)
    load_lora_state_dict(load_ok, state, "default")
    ids = torch.randint(0, 256, (1, 5))
    assert torch.allclose(load_ok(ids), src(ids))
    bad = dict(state)
    first = next(iter(bad))
    bad[first] = torch.zeros(1, 1)
    with pytest.raises(AdapterError, match="expected shape"):
        load_lora_state_dict(load_ok, bad, "default")
    bad[first] = torch.full_like(state[first], float("nan"))
    with pytest.raises(AdapterError, match="non-finite"):
        load_lora_state_dict(load_ok, bad, "default")
    assert torch.allclose(load_ok(ids), src(ids))


def test_config_and_name_validation() -> None:
    with pytest.raises(AdapterError, match="rank"):
        LoraConfig(r=0, alpha=1, target_modules=("q_proj",))
    with pytest.raises(AdapterError, match="unknown LoRA target"):
        LoraConfig(r=2, alpha=1, target_modules=("qkv",))
    model = make_tiny_model(0)
    apply_lora(model, LoraConfig(r=2, alpha=1, target_modules=("q_proj",)))
    with pytest.raises(AdapterError, match="already exists"):
        apply_lora(model, LoraConfig(r=2, alpha=1, target_modules=("q_proj",)))
    with pytest.raises(AdapterError, match="no adapter"):
        set_active_adapter(model, "nope")


def test_same_generator_seed_same_init() -> None:
    config = LoraConfig(r=2, alpha=1, target_modules=("q_proj",))
    a, b = make_tiny_model(0), make_tiny_model(0)
    apply_lora(a, config, generator=torch.Generator().manual_seed(9))
    apply_lora(b, config, generator=torch.Generator().manual_seed(9))
    sa, sb = lora_state_dict(a, "default"), lora_state_dict(b, "default")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_frozen_backbone_passes_the_same_gradients_as_master_weights() -> None:
    config = LoraConfig(r=2, alpha=4, target_modules=ALL)
    master = make_tiny_model(6)
    frozen = make_tiny_model(6)
    frozen.freeze_backbone()
    grads = []
    for model in (master, frozen):
        apply_lora(model, config, generator=torch.Generator().manual_seed(1))
        _randomize(model, "default", 7)
        mark_only_lora_as_trainable(model, "default")
        ids = torch.arange(12).view(1, 12) * 7 % 256
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 7 * 2
    first_layer = "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert grads[1][first_layer].abs().sum() > 0
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], rtol=1e-3, atol=1e-5), name


def test_gradient_checkpointing_gives_the_same_lora_gradients() -> None:
    grads = []
    for recompute in (False, True):
        model = make_tiny_model(seed=4)
        model.freeze_backbone()
        config = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "o_proj"))
        apply_lora(model, config, name="a", generator=torch.Generator().manual_seed(0))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, generator=torch.Generator().manual_seed(1))
        model.gradient_checkpointing = recompute
        ids = torch.arange(24).reshape(2, 12)
        model(ids).logsumexp(-1).mean().backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert grads[0] and len(grads[0]) == len(grads[1])
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1], strict=True))
