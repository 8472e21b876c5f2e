import json

import torch

from r3mes.model.generate import GenerationConfig, generate
from r3mes.model.shipped import SHIPPED_MODEL_NAME, load_shipped_model, shipped_model_dir

torch.set_num_threads(1)


def test_shipped_folder_is_complete_and_small() -> None:
    folder = shipped_model_dir()
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "SOURCES.md",
    } <= names
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8 * 1024 * 1024
    assert "r3mes model pretrain --out" in (folder / "SOURCES.md").read_text()
    assert SHIPPED_MODEL_NAME == "r3mes-bitnet-mini"


def test_shipped_model_beats_unigram_baseline() -> None:
    metrics = json.loads((shipped_model_dir() / "metrics.json").read_text())
    assert metrics["heldout_perplexity"] < 0.5 * metrics["unigram_perplexity"]


def test_shipped_model_loads_packed_and_generates() -> None:
    model, tokenizer = load_shipped_model()
    assert model.config.vocab_size == tokenizer.vocab_size
    assert all(m.frozen for _, m in model.bit_linears())
    packed = sum(m.weight_bytes() for _, m in model.bit_linears())
    ternary = sum(m.in_features * m.out_features for _, m in model.bit_linears())
    assert packed / ternary < 0.26
    text = generate(model, tokenizer, ["Return the"], GenerationConfig(max_new_tokens=12))[0]
    assert len(text.strip()) > 0


def test_shipped_model_heldout_perplexity_recomputed() -> None:
    """Score the shipped weights on a few held-out windows of the same split, now."""
    from r3mes.model.corpus import build_corpus, split_corpus
    from r3mes.model.pretrain import heldout_windows, perplexity, token_stream, unigram_perplexity

    model, tokenizer = load_shipped_model()
    recorded = json.loads((shipped_model_dir() / "metrics.json").read_text())
    train_docs, heldout_docs = split_corpus(build_corpus())
    seq_len = recorded["config"]["seq_len"]
    windows = heldout_windows(token_stream(tokenizer, heldout_docs), seq_len, 8)
    ppl = perplexity(model, windows)
    unigram = unigram_perplexity(token_stream(tokenizer, train_docs), windows, tokenizer.vocab_size)
    # 58 vs 870 on these 8 windows (67 vs 781 over the recorded 200)
    assert ppl < 0.2 * unigram
    assert ppl < 2 * recorded["heldout_perplexity"]
