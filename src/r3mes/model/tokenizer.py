"""Byte-level BPE tokenizer (HF `tokenizers`), saved as one `tokenizer.json`.

Special tokens: `<pad>` = 0, `<s>` = 1, `</s>` = 2. Byte-level means any text encodes,
and decode(encode(text)) == text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from r3mes.model.errors import TokenizerError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024


class Tokenizer:
    """Thin typed wrapper around `tokenizers.Tokenizer`."""

    def __init__(self, inner: object) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        if not isinstance(inner, HFTokenizer):
            raise TokenizerError("Tokenizer wraps a tokenizers.Tokenizer")
        self._inner = inner
        self.pad_id = self._special(PAD)
        self.bos_id = self._special(BOS)
        self.eos_id = self._special(EOS)

    def _special(self, token: str) -> int:
        index = self._inner.token_to_id(token)
        if index is None:
            raise TokenizerError(f"tokenizer lacks the special token {token}")
        return int(index)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return int(self._inner.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects str, got {type(text).__name__}")
        return list(self._inner.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, in parallel inside `tokenizers`."""
        return [
            list(e.ids) for e in self._inner.encode_batch(list(texts), add_special_tokens=False)
        ]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens dropped."""
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise TokenizerError(f"token ids {bad[:5]} are outside the vocabulary")
        return str(self._inner.decode([int(i) for i in ids], skip_special_tokens=True))

    def save(self, directory: Path) -> Path:
        """Write `tokenizer.json` into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        self._inner.save(str(path))
        return path

    def to_json(self) -> str:
        """The canonical `tokenizer.json` text."""
        return str(self._inner.to_str())


def load_tokenizer(directory: Path | str) -> Tokenizer:
    """Load `tokenizer.json` from `directory` (or the file itself)."""
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(directory)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise TokenizerError(f"{path}: no tokenizer file; train one with `r3mes model pretrain`")
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise TokenizerError(f"{path}: larger than {MAX_TOKENIZER_BYTES} bytes, refusing to load")
    try:
        json.loads(path.read_text(encoding="utf-8"))
        inner = HFTokenizer.from_file(str(path))
    except (ValueError, UnicodeDecodeError, Exception) as exc:
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({exc})") from exc
    return Tokenizer(inner)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer with `vocab_size` ids (3 special tokens included)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if not 259 <= vocab_size <= 1_000_000:
        raise TokenizerError(
            f"vocab_size must be in 259..1000000 (256 bytes + 3), got {vocab_size}"
        )
    inner = HFTokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    inner.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(inner)
