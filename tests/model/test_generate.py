import pytest
import torch

from r3mes.model.errors import GenerationError
from r3mes.model.generate import GenerationConfig, generate, generate_token_ids, stream_generate
from r3mes.model.lora import LoraConfig, apply_lora, set_adapter_rows
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.tiny import make_tiny_model
from r3mes.model.tokenizer import Tokenizer, train_bpe_tokenizer

torch.set_num_threads(1)
TEXTS = ["the quick brown fox jumps over the lazy dog. " * 3, "def add(a, b): return a + b\n"] * 10


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe_tokenizer(TEXTS, 300)


@pytest.fixture(scope="module")
def model() -> BitNetForCausalLM:
    m = make_tiny_model(4, vocab_size=300)
    m.freeze_backbone()
    return m


def test_greedy_with_cache_equals_without(model: BitNetForCausalLM) -> None:
    prompts = [[1, 5, 6, 7, 8], [1, 9], [1, 20, 21, 22]]
    cached = GenerationConfig(max_new_tokens=12)
    uncached = GenerationConfig(max_new_tokens=12, use_cache=False)
    a = torch.stack(list(generate_token_ids(model, prompts, cached, pad_id=0)))
    b = torch.stack(list(generate_token_ids(model, prompts, uncached, pad_id=0)))
    assert a.shape == (12, 3)
    assert torch.equal(a, b)


def test_batched_equals_one_by_one(model: BitNetForCausalLM, tok: Tokenizer) -> None:
    prompts = ["the quick", "def add(a, b", ""]
    config = GenerationConfig(max_new_tokens=10)
    batched = generate(model, tok, prompts, config)
    alone = [generate(model, tok, [p], config)[0] for p in prompts]
    assert batched == alone


def test_stream_pieces_join_to_generate(model: BitNetForCausalLM, tok: Tokenizer) -> None:
    config = GenerationConfig(max_new_tokens=15, temperature=0.9, top_k=50, top_p=0.9, seed=3)
    pieces = list(stream_generate(model, tok, "the lazy", config))
    assert "".join(pieces) == generate(model, tok, ["the lazy"], config)[0]


def test_sampling_is_seeded(model: BitNetForCausalLM, tok: Tokenizer) -> None:
    config = GenerationConfig(max_new_tokens=20, temperature=1.5, seed=11)
    first = generate(model, tok, ["fox"], config)
    assert generate(model, tok, ["fox"], config) == first
    others = {generate(model, tok, ["fox"], GenerationConfig(20, 1.5, seed=s))[0] for s in range(5)}
    assert len(others) > 1


def test_top_k_one_is_greedy(model: BitNetForCausalLM, tok: Tokenizer) -> None:
    greedy = generate(model, tok, ["the"], GenerationConfig(max_new_tokens=10))
    topk = generate(model, tok, ["the"], GenerationConfig(10, temperature=2.0, top_k=1, seed=0))
    tiny_p = generate(
        model, tok, ["the"], GenerationConfig(10, temperature=2.0, top_p=1e-6, seed=0)
    )
    assert greedy == topk == tiny_p


def test_stop_strings_and_tokens(model: BitNetForCausalLM, tok: Tokenizer) -> None:
    full = generate(model, tok, ["the"], GenerationConfig(max_new_tokens=20))[0]
    assert len(full) > 3
    stop = full[2:4]
    cut = generate(model, tok, ["the"], GenerationConfig(20, stop_strings=(stop,)))[0]
    assert cut == full[: full.find(stop)]
    streamed = "".join(
        stream_generate(model, tok, "the", GenerationConfig(20, stop_strings=(stop,)))
    )
    assert streamed == cut
    first_id = next(
        iter(generate_token_ids(model, [[1, *tok.encode("the")]], GenerationConfig(1), pad_id=0))
    )
    stopped = generate(
        model, tok, ["the"], GenerationConfig(20, stop_token_ids=(int(first_id[0]),))
    )
    assert stopped == [""]


def test_max_new_tokens_and_errors(model: BitNetForCausalLM, tok: Tokenizer) -> None:
    assert generate(model, tok, ["x"], GenerationConfig(max_new_tokens=0)) == [""]
    with pytest.raises(GenerationError, match="positions"):
        generate(model, tok, ["x"], GenerationConfig(max_new_tokens=10_000))
    with pytest.raises(GenerationError, match="temperature"):
        GenerationConfig(temperature=-1)
    with pytest.raises(GenerationError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(GenerationError, match="prompts"):
        generate(model, tok, [], GenerationConfig())


def test_mixed_adapter_batch_generation(tok: Tokenizer) -> None:
    m = make_tiny_model(5, vocab_size=300)
    m.freeze_backbone()
    apply_lora(m, LoraConfig(r=2, alpha=8, target_modules=("q_proj", "up_proj")), name="a")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    config = GenerationConfig(max_new_tokens=8)
    set_adapter_rows(m, ["a"])
    with_a = generate(m, tok, ["the"], config)
    set_adapter_rows(m, [None])
    base = generate(m, tok, ["the"], config)
    set_adapter_rows(m, [None, "a"])
    assert generate(m, tok, ["the", "the"], config) == base + with_a


def test_config_accepts_lists_and_rejects_bad_stops(
    model: BitNetForCausalLM, tok: Tokenizer
) -> None:
    config = GenerationConfig(max_new_tokens=3, stop_strings=["x"], stop_token_ids=[5])  # type: ignore[arg-type]
    assert config.stop_strings == ("x",) and config.stop_token_ids == (5,)
    with pytest.raises(GenerationError, match="stop_strings"):
        GenerationConfig(stop_strings="abc")  # type: ignore[arg-type]
    with pytest.raises(GenerationError, match="stop_strings"):
        GenerationConfig(stop_strings=("",))
