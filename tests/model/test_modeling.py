import pytest
import torch

from r3mes.model.bitlinear import BitLinear
from r3mes.model.errors import ModelError
from r3mes.model.kv_cache import KVCache
from r3mes.model.tiny import make_tiny_model, tiny_config

torch.set_num_threads(1)


def test_forward_shapes_and_dtype() -> None:
    model = make_tiny_model(0)
    logits = model(torch.randint(0, 256, (3, 9)))
    assert logits.shape == (3, 9, 256) and logits.dtype == torch.float32


def test_is_causal() -> None:
    model = make_tiny_model(0)
    ids = torch.randint(0, 256, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 256
    assert torch.allclose(model(ids)[:, :-1], model(changed)[:, :-1])


def test_kv_cache_matches_full_forward() -> None:
    model = make_tiny_model(1)
    ids = torch.randint(0, 256, (2, 10))
    full = model(ids)
    cache = KVCache(2)
    parts = [model(ids[:, :6], kv_cache=cache)]
    for i in range(6, 10):
        parts.append(model(ids[:, i : i + 1], kv_cache=cache))
    assert cache.seq_length == 10
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_last_only_is_the_last_position_of_the_full_logits() -> None:
    """`last_only` (a prefill that samples one token) runs the head on one position."""
    model = make_tiny_model(1)
    ids = torch.randint(0, 256, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0  # left padding: the last position is real in every row
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    full = model(ids, attention_mask=mask, position_ids=positions)
    last = model(ids, attention_mask=mask, position_ids=positions, last_only=True)
    assert last.shape == (2, 1, 256)
    assert torch.allclose(last, full[:, -1:], atol=1e-6)
    cache = KVCache(2)
    first = model(ids[:, :6], kv_cache=cache, last_only=True)
    assert first.shape == (2, 1, 256) and cache.seq_length == 6  # the cache holds all 6


def test_left_padding_gives_same_logits_as_unpadded() -> None:
    model = make_tiny_model(2)
    ids = torch.randint(3, 256, (1, 5))
    alone = model(ids)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(padded, attention_mask=mask, position_ids=positions)
    assert torch.allclose(out[:, 3:], alone, atol=1e-5)


def test_freeze_backbone_packs_everything_and_keeps_logits() -> None:
    model = make_tiny_model(3)
    ids = torch.randint(0, 256, (2, 6))
    before = model(ids).detach()
    model.freeze_backbone()
    assert all(m.frozen for _, m in model.bit_linears())
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.allclose(model(ids), before, atol=1e-4)
    assert sum(isinstance(m, BitLinear) for m in model.modules()) == 14


def test_untied_head_is_separate() -> None:
    model = make_tiny_model(0, tie_word_embeddings=False)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    tied = make_tiny_model(0)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight


def test_same_seed_same_model() -> None:
    a, b = make_tiny_model(7), make_tiny_model(7)
    ids = torch.randint(0, 256, (1, 4))
    assert torch.equal(a(ids), b(ids))


def test_rejects_bad_inputs() -> None:
    model = make_tiny_model(0)
    with pytest.raises(ModelError, match="outside the vocabulary"):
        model(torch.tensor([[300]]))
    with pytest.raises(ModelError, match="integer tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ModelError, match="attention_mask"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4))
    small = make_tiny_model(0, max_position_embeddings=4)
    with pytest.raises(ModelError, match="max_position_embeddings"):
        small(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ModelError, match="layers"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=KVCache(3))


def test_training_from_scratch_reduces_loss() -> None:
    torch.manual_seed(0)
    model = make_tiny_model(0, vocab_size=16)
    model.train()
    data = torch.arange(16).repeat(2, 2)  # (2, 32), a deterministic pattern
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits = model(data[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
    assert tiny_config().num_hidden_layers == 2


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_word_embeddings": False}, {"num_key_value_heads": 4, "intermediate_size": 40}],
)
def test_tensor_shapes_match_a_built_model(overrides: dict[str, object]) -> None:
    from r3mes.model.config import tensor_shapes

    model = make_tiny_model(0, **overrides)
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        built.pop("lm_head.weight")
    assert tensor_shapes(model.config) == built
