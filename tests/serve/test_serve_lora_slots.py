"""The serving LoRA slots compute what `r3mes.model.lora` computes, per batch row."""

from __future__ import annotations

import gc
from copy import deepcopy as copy_module

import pytest
import torch

from r3mes.model.lora import LoraConfig, apply_lora, load_lora_state_dict, set_active_adapter
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.tiny import make_tiny_model
from r3mes.serve.errors import ServeError
from r3mes.serve.lora_slots import LoraSlots


def model() -> BitNetForCausalLM:
    m = make_tiny_model(3)
    m.freeze_backbone()
    return m


def random_state(config: LoraConfig, seed: int) -> dict[str, torch.Tensor]:
    donor = model()
    apply_lora(donor, config, name="d")
    from r3mes.model.lora import lora_state_dict

    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in lora_state_dict(donor, "d").items()
    }


CFG_A = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "k_proj", "v_proj", "down_proj"))
CFG_B = LoraConfig(r=8, alpha=4, target_modules=("o_proj", "gate_proj", "up_proj", "v_proj"))


@torch.inference_mode()
def test_slots_match_the_model_lora_row_by_row() -> None:
    states = {"a": random_state(CFG_A, 1), "b": random_state(CFG_B, 2)}
    reference = model()
    apply_lora(reference, CFG_A, name="a")
    load_lora_state_dict(reference, states["a"], "a")
    apply_lora(reference, CFG_B, name="b")
    load_lora_state_dict(reference, states["b"], "b")
    ids = torch.randint(3, 250, (3, 7), generator=torch.Generator().manual_seed(0))
    expected = []
    for row, name in enumerate(["a", None, "b"]):
        set_active_adapter(reference, name)
        expected.append(reference(ids[row : row + 1])[0])

    served = model()
    slots = LoraSlots(served, slots=2, max_rank=16)
    slots.load(1, states["a"], CFG_A)
    slots.load(2, states["b"], CFG_B)
    slots.select([1, 0, 2])
    got = served(ids)
    for row in range(3):
        assert torch.allclose(got[row], expected[row], atol=1e-4), row
    slots.select([0, 0, 0])
    base = served(ids)
    set_active_adapter(reference, None)
    assert torch.equal(base[1], got[1])  # base rows are exact, with or without neighbours
    assert torch.allclose(base, reference(ids), atol=1e-5)
    slots.clear(1)
    slots.select([1, 0, 2])
    assert torch.allclose(served(ids)[0], base[0], atol=1e-6)  # a cleared slot is a no-op


def test_bad_adapters_are_refused() -> None:
    slots = LoraSlots(model(), slots=1, max_rank=4)
    state = random_state(CFG_B, 3)
    with pytest.raises(ServeError, match="max LoRA rank"):
        slots.load(1, state, CFG_B)
    small = LoraConfig(r=4, alpha=8, target_modules=("q_proj",))
    good = random_state(small, 4)
    key = next(iter(good))
    with pytest.raises(ServeError, match="shape"):
        slots.load(1, {**good, key: torch.zeros(3, 3)}, small)
    with pytest.raises(ServeError, match="no place"):
        slots.load(1, {**good, "base_model.model.extra.lora_A.weight": torch.zeros(1)}, small)
    with pytest.raises(ServeError, match="lacks"):
        slots.load(1, {k: v for k, v in good.items() if "lora_B" not in k}, small)
    with pytest.raises(ServeError, match="non-finite"):
        slots.load(1, {**good, key: torch.full_like(good[key], float("nan"))}, small)
    with pytest.raises(ServeError, match="slot 2"):
        slots.load(2, good, small)


def test_one_engine_per_model_and_a_copy_is_another_model() -> None:
    m = model()
    first = LoraSlots(m, slots=1, max_rank=4)
    with pytest.raises(ServeError, match="own copy"):
        LoraSlots(m, slots=1, max_rank=4)
    copy = LoraSlots(copy_module(m), slots=1, max_rank=4)  # the ownership mark came along
    assert first.serves(m) and not copy.serves(m)
    del first, copy
    gc.collect()
    LoraSlots(m, slots=1, max_rank=4)  # the owner is gone: the model is free again


def test_no_module_level_registries() -> None:
    """Issue 18: ownership and serials live on instances, not in module globals."""
    import r3mes.serve.adapters as adapters
    import r3mes.serve.lora_slots as lora_slots

    assert not hasattr(lora_slots, "_SERVED") and not hasattr(adapters, "_SERIALS")


def test_slot_memory_follows_what_is_loaded_not_the_limits() -> None:
    """Session 5 (issue 16): slots were preallocated at max_rank for every slot (3.1 GB at
    the 2B shape with 8 slots of rank 64 before any adapter arrived), and a batch's weights
    were gathered once per row; now a slot refers to its adapter as loaded, and a batch
    stacks each adapter it uses once, at its own rank, whatever the number of rows."""
    served = model()
    slots = LoraSlots(served, slots=8, max_rank=64)
    assert slots.nbytes() == 0
    state = random_state(CFG_A, 5)
    slots.load(3, state, CFG_A)
    lora_floats = sum(v.numel() for v in state.values())  # r x (in + out) per target
    assert slots.nbytes() == lora_floats * 4  # float32, rank 4, no padding to 64
    state_b = random_state(CFG_B, 6)
    slots.load(5, state_b, CFG_B)
    ids = torch.randint(3, 250, (4, 5), generator=torch.Generator().manual_seed(1))
    ids[0] = ids[1]  # row 1's prompt in row 0 too: the same output under [3, 5, 0, 0] below
    slots.select([3, 3, 3, 3])
    with torch.inference_mode():
        same = served(ids)
    assert slots.stacked_nbytes() == lora_floats * 4  # the adapter once, not once per row
    b_floats = sum(v.numel() for v in state_b.values())
    slots.select([5, 5, 5, 5])  # adapter B alone: A's projections (q, k, down) hold nothing
    assert slots.stacked_nbytes() == b_floats * 4
    slots.select([0, 3, 5, 3])
    with torch.inference_mode():
        got = served(ids)
    assert slots.stacked_nbytes() == (lora_floats + b_floats) * 4
    # no layer keeps its input (or its A product) once the forward has passed it
    assert all(layer.group.x is None for layer in slots.layers.values())
    assert all(layer.group.h.numel() == 0 for layer in slots.layers.values())
    solo = model()
    solo_slots = LoraSlots(solo, slots=1, max_rank=4)
    solo_slots.load(1, state, CFG_A)
    solo_slots.select([1])
    with torch.inference_mode():
        alone = solo(ids[1:2])
    assert torch.allclose(got[1], alone[0], atol=1e-5)  # row 1: adapter A beside B
    assert torch.allclose(same[1], alone[0], atol=1e-5)
    slots.select([0, 0, 0, 0])
    assert slots.stacked_nbytes() == 0  # a base-only batch holds no stacked weights
    with torch.inference_mode():
        assert torch.equal(served(ids)[0], got[0])  # base rows beside adapters are exact
    slots.select([3, 5, 0])  # rows do not share adapters: one (padded) copy per row
    with torch.inference_mode():
        assert torch.allclose(served(ids[:3])[0], alone[0], atol=1e-5)
    assert slots.stacked_nbytes() > (lora_floats + b_floats) * 4
    slots.clear(3)
    slots.clear(5)
    assert slots.nbytes() == 0


def test_freed_heap_is_returned_where_the_c_library_can() -> None:
    import ctypes
    import sys

    from r3mes.serve.heap import return_freed_heap

    glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "malloc_trim")
    assert return_freed_heap() is glibc
