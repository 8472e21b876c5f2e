import json
from pathlib import Path

import pytest

from r3mes.model.errors import TokenizerError
from r3mes.model.tokenizer import load_tokenizer, train_bpe_tokenizer

TEXTS = ["Return the absolute value of the argument.", "def f(x):\n    return x * 2\n"] * 20


def test_train_save_load_round_trip(tmp_path: Path) -> None:
    tok = train_bpe_tokenizer(TEXTS, 300)
    assert tok.vocab_size == 300
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    text = "Return the value: naïve 日本 \t\n emoji \U0001f600"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(tok.encode("Return the absolute value")) < len("Return the absolute value")
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(text) == ids
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "BPE"


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path)
    tok = train_bpe_tokenizer(TEXTS, 300)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([5000])
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_bpe_tokenizer(TEXTS, 10)
