"""The batched, left-padded KV cache decodes exactly like each sequence alone, and holds
memory in proportion to what is live."""

from __future__ import annotations

import random

import pytest
import torch

from r3mes.model.kv_cache import KVCache
from r3mes.model.tiny import make_tiny_model
from r3mes.serve.errors import CacheBudgetExceeded, ServeError
from r3mes.serve.kv import MIN_HEADROOM, BatchKV, SequenceKV

PROMPTS = [[1, 5, 9], [1, 7, 7, 7, 7, 7, 3, 4], [1, 20], [1, 30, 31, 32, 33]]


def alone(model: torch.nn.Module, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """Greedy logits per step with the model's own KVCache."""
    cache = KVCache(2)
    logits = model(torch.tensor([prompt]), kv_cache=cache)[0, -1]
    out = [logits]
    for _ in range(steps):
        token = int(logits.argmax())
        logits = model(torch.tensor([[token]]), kv_cache=cache)[0, -1]
        out.append(logits)
    return out


def prefill(model: torch.nn.Module, kv: BatchKV, prompt: list[int]) -> int:
    cache = SequenceKV(2)
    logits = model(torch.tensor([prompt]), kv_cache=cache)[0, -1]
    kv.add(cache)
    return int(logits.argmax())


def step(model: torch.nn.Module, kv: BatchKV, tokens: list[int]) -> torch.Tensor:
    logits: torch.Tensor = model(
        torch.tensor([[t] for t in tokens]),
        attention_mask=kv.attention_mask(),
        position_ids=kv.position_ids(),
        kv_cache=kv,
    )[:, -1]
    kv.advance()
    return logits


@torch.inference_mode()
def test_join_leave_and_growth_match_single_sequence_decoding() -> None:
    model = make_tiny_model(0)
    steps = 70  # well past the first column capacity: the buffers must grow
    refs = [alone(model, p, steps) for p in PROMPTS]
    kv = BatchKV(2, n_kv_heads=2, head_dim=8, max_rows=4, max_length=128)
    live = [0, 1]  # rows hold these prompts; 2 and 3 join later, 0 leaves early
    tokens = [prefill(model, kv, PROMPTS[i]) for i in live]
    done = dict.fromkeys(live, 0)
    for n in range(1, steps):
        if n == 5:
            live.append(2)
            tokens.append(prefill(model, kv, PROMPTS[2]))
            done[2] = 0
        if n == 9:
            keep = [r for r, i in enumerate(live) if i != 0]
            kv.keep_rows(keep)
            tokens = [tokens[r] for r in keep]
            live = [live[r] for r in keep]
        if n == 12:
            live.append(3)
            tokens.append(prefill(model, kv, PROMPTS[3]))
            done[3] = 0
        logits = step(model, kv, tokens)
        for row, i in enumerate(live):
            done[i] += 1
            ref = refs[i][done[i]]
            assert torch.allclose(logits[row], ref, atol=1e-4), (n, i)
        tokens = [int(x) for x in logits.argmax(-1)]
    assert kv.rows == 3
    assert kv.length == max(kv.lengths)  # shared left padding was trimmed when row 0 left


def test_emptied_cache_resets() -> None:
    model = make_tiny_model(0)
    kv = BatchKV(2, n_kv_heads=2, head_dim=8, max_rows=4, max_length=128)
    with torch.inference_mode():
        prefill(model, kv, PROMPTS[1])
    assert kv.nbytes() > 0
    kv.keep_rows([])
    assert kv.rows == 0 and kv.length == 0 and kv.lengths == []
    assert kv.nbytes() == 0  # nothing live, nothing held


def fake_prefill(kv: BatchKV, length: int, fill: float) -> SequenceKV:
    """A prefill cache of `length` positions whose every key/value equals `fill`."""
    seq = SequenceKV(kv.num_layers)
    for layer in range(kv.num_layers):
        block = torch.full((1, 2, length, 8), fill)
        seq.update(layer, block, block.clone())
    return seq


def test_sixteen_short_sequences_hold_sixteen_short_rows() -> None:
    """Issue 19 item 7: 16 sequences of 10 tokens ended at a capacity of (16, 262144)."""
    kv = BatchKV(4, n_kv_heads=2, head_dim=8, max_rows=16, max_length=2048)
    for i in range(16):
        kv.add(fake_prefill(kv, 10, float(i)))
    rows, columns = kv.capacity
    assert rows == 16
    assert 11 <= columns <= 11 + MIN_HEADROOM
    assert kv.nbytes() <= 2 * kv.live_nbytes()
    assert kv.peak_nbytes <= 2 * kv.live_nbytes()


def test_random_joins_steps_and_leaves_keep_contents_and_bounded_capacity() -> None:
    rng = random.Random(7)
    kv = BatchKV(2, n_kv_heads=2, head_dim=8, max_rows=8, max_length=300)
    expected: list[list[float]] = []  # per row: the value written at each real position
    next_fill = 1.0
    for _ in range(400):
        op = rng.random()
        if op < 0.2 and kv.rows < 8:
            n = rng.randint(1, 60)
            if max([len(e) for e in expected] + [n]) + 1 >= 300:
                continue
            kv.reserve(kv.rows + 1)
            kv.add(fake_prefill(kv, n, next_fill))
            expected.append([next_fill] * n)
            next_fill += 1
        elif op < 0.35 and kv.rows:
            keep = sorted(rng.sample(range(kv.rows), rng.randint(0, kv.rows - 1)))
            kv.keep_rows(keep)
            expected = [expected[r] for r in keep]
        elif kv.rows and kv.length + 1 < 300:
            kv.attention_mask()
            values = [next_fill + r / 100 for r in range(kv.rows)]
            for layer in range(2):
                new = torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 2, 1, 8)
                kv.update(layer, new, new.clone())
            kv.advance()
            for row, v in enumerate(values):
                expected[row].append(v)
            next_fill += 1
        rows, columns = kv.capacity
        assert rows == kv.rows == len(expected)
        assert kv.lengths == [len(e) for e in expected]
        if kv.rows:
            assert kv.length == max(kv.lengths)  # shared padding trimmed
            needed = kv.length + 1
            assert columns <= needed + max(MIN_HEADROOM, needed // 4)
            assert kv.nbytes() <= kv.max_bytes
        for row, values in enumerate(expected):
            n = len(values)
            got = kv._k[1][row, 0, kv.length - n : kv.length, 0].tolist()
            assert got == pytest.approx(values)
            assert int(kv._mask[row, : kv.length].sum()) == n


def test_the_cache_never_allocates_past_its_budget() -> None:
    cell = BatchKV(1, n_kv_heads=2, head_dim=8, max_rows=4, max_length=64).cell_bytes
    budget = 150 * cell  # buffers: 2/3 of it (1 layer: K and V), 100 cells
    kv = BatchKV(1, n_kv_heads=2, head_dim=8, max_rows=4, max_length=64, max_bytes=budget)
    assert kv.buffer_limit == 100 * cell
    kv.reserve(3)
    for _ in range(3):
        kv.add(fake_prefill(kv, 30, 1.0))
    assert kv.nbytes() <= 100 * cell  # 3 x 31 cells: the headroom was clamped to the budget
    for _ in range(3):  # up to 3 rows x 33 columns = 99 cells
        kv.attention_mask()
        kv.advance()
        assert kv.nbytes() <= 100 * cell
    with pytest.raises(CacheBudgetExceeded, match="budget"):
        kv.attention_mask()  # 3 x 34 > 100 cells
    assert kv.peak_nbytes <= budget
    with pytest.raises(ServeError, match="cannot hold one sequence"):
        BatchKV(1, n_kv_heads=2, head_dim=8, max_rows=4, max_length=64, max_bytes=10 * cell)
