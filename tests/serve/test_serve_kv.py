"""The batched, left-padded KV cache decodes exactly like each sequence alone."""

from __future__ import annotations

import torch

from r3mes.model.kv_cache import KVCache
from r3mes.model.tiny import make_tiny_model
from r3mes.serve.kv import BatchKV, SequenceKV

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
    logits = model(
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
    steps = 70  # past the initial 64-column capacity: the buffers must grow
    refs = [alone(model, p, steps) for p in PROMPTS]
    kv = BatchKV(2, n_kv_heads=2, head_dim=8)
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
    kv = BatchKV(2, n_kv_heads=2, head_dim=8)
    with torch.inference_mode():
        prefill(model, kv, PROMPTS[1])
    kv.keep_rows([])
    assert kv.rows == 0 and kv.length == 0 and kv.lengths == []
