"""The vocabulary a GGUF export carries: r3mes' own byte-level BPE, or a synthetic one.

llama.cpp refuses a model file without a vocabulary of the model's size, so an export always
writes one:

* `from_tokenizer_json`: the checkpoint's `tokenizer.json` as r3mes trains it (HF
  `tokenizers` byte-level BPE, GPT-2 pre-tokenizer regex) becomes llama.cpp's `gpt2` model
  with pre-tokenizer `gpt-2` (GPT-2's regex): the same token strings (GPT-2's byte-to-unicode
  alphabet, which llama.cpp decodes the same way), the same merges in rank order, the
  special tokens as control tokens.  Ids past the tokenizer's size up to the model's
  `vocab_size` are unused padding tokens;
* `synthetic`: for checkpoints without a tokenizer (`r3mes model init` writes random weights
  only): llama.cpp's `llama` (SentencePiece) model with the config's special tokens at their
  ids, an unknown token, the 256 byte tokens `<0x00>`..`<0xFF>` (so any text encodes) and
  unused tokens for the rest.  Text through it is bytes, not the model's words; the ids are
  what a benchmark feeds.

Both are pure: they take the config (and the JSON text) and return a frozen `GgufVocab`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from r3mes.model.config import BitNetConfig
from r3mes.model.errors import ModelError

# gguf.TokenType values (llama.cpp's llama_token_type), kept here so this module needs no gguf
NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6
BYTE_TOKENS = 256


class GgufExportError(ModelError):
    """A checkpoint cannot be written as a GGUF file llama.cpp runs; the message says why."""


@dataclass(frozen=True)
class GgufVocab:
    """Everything the `tokenizer.ggml.*` keys of a GGUF file hold."""

    model: str
    """llama.cpp's tokenizer model: "gpt2" (BPE) or "llama" (SentencePiece)."""
    pre: str | None
    """Pre-tokenizer name for "gpt2" ("gpt-2": GPT-2's regex); None for "llama"."""
    tokens: tuple[str, ...]
    """Token text by id, exactly `vocab_size` of them."""
    token_types: tuple[int, ...]
    """llama.cpp token type by id (NORMAL, CONTROL, BYTE, UNUSED, ...)."""
    merges: tuple[str, ...]
    """BPE merges "left right" in rank order ("gpt2" only)."""
    special_ids: tuple[tuple[str, int], ...]
    """("bos" | "eos" | "pad" | "unk", id) pairs written as `tokenizer.ggml.<role>_token_id`."""
    source: str
    """Where it came from: "tokenizer.json" or "synthetic"."""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.token_types):
            raise GgufExportError(
                f"vocabulary has {len(self.tokens)} tokens but {len(self.token_types)} types"
            )
        if len(set(self.tokens)) != len(self.tokens):
            raise GgufExportError("vocabulary holds the same token text twice")
        for role, index in self.special_ids:
            if not 0 <= index < len(self.tokens):
                raise GgufExportError(f"{role} token id {index} is outside the vocabulary")


def _config_specials(config: BitNetConfig) -> dict[str, int]:
    roles = {
        "bos": config.bos_token_id,
        "eos": config.eos_token_id,
        "pad": config.pad_token_id,
    }
    return {role: index for role, index in roles.items() if index is not None}


def synthetic(config: BitNetConfig) -> GgufVocab:
    """A SentencePiece-style vocabulary of `config.vocab_size` ids (see the module docstring).

    The config's bos/eos/pad ids keep their ids (as control tokens); unknown, bos and eos
    tokens the config lacks take the first free ids, then the byte tokens, then unused ones.
    """
    size = config.vocab_size
    specials = _config_specials(config)
    if size < BYTE_TOKENS + 4:
        raise GgufExportError(
            f"vocab_size {size} is too small for a synthetic vocabulary "
            f"({BYTE_TOKENS} byte tokens + unknown, bos, eos and pad)"
        )
    tokens: list[str | None] = [None] * size
    types = [UNUSED] * size
    names = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
    for role, index in sorted(specials.items(), key=lambda item: item[1]):
        if tokens[index] is None:  # two roles may share one id (bos == eos)
            tokens[index], types[index] = names[role], CONTROL
    free = (i for i in range(size) if tokens[i] is None)
    for role in ("bos", "eos"):
        if role not in specials:
            specials[role] = next(free)
            tokens[specials[role]], types[specials[role]] = names[role], CONTROL
    specials["unk"] = next(free)
    tokens[specials["unk"]], types[specials["unk"]] = names["unk"], UNKNOWN
    for byte in range(BYTE_TOKENS):
        index = next(free)
        tokens[index], types[index] = f"<0x{byte:02X}>", BYTE
    texts = tuple(t if t is not None else f"<r3mes_unused_{i}>" for i, t in enumerate(tokens))
    return GgufVocab(
        model="llama",
        pre=None,
        tokens=texts,
        token_types=tuple(types),
        merges=(),
        special_ids=tuple(sorted(specials.items())),
        source="synthetic",
    )


def from_tokenizer_json(text: str, config: BitNetConfig) -> GgufVocab:
    """llama.cpp's `gpt2` vocabulary from r3mes' byte-level BPE `tokenizer.json` text.

    Raises `GgufExportError` for any other tokenizer (another model type, another
    pre-tokenizer, more ids than the model has), naming what differs.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GgufExportError(f"tokenizer.json is not valid JSON ({exc})") from exc
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise GgufExportError(
            "tokenizer.json is not a BPE tokenizer; export with --vocab synthetic"
        )
    _check_byte_level(data.get("pre_tokenizer"))
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in vocab.items()
    ):
        raise GgufExportError("tokenizer.json model.vocab must map token text to integer ids")
    by_id: dict[int, str] = {index: token for token, index in vocab.items()}
    control = set()
    for added in data.get("added_tokens") or []:
        if not isinstance(added, dict) or not isinstance(added.get("id"), int):
            raise GgufExportError("tokenizer.json added_tokens entries need an integer id")
        by_id[added["id"]] = str(added.get("content", ""))
        if added.get("special"):
            control.add(added["id"])
    size = config.vocab_size
    if len(by_id) > size or (by_id and (min(by_id) < 0 or max(by_id) >= size)):
        raise GgufExportError(
            f"tokenizer.json has ids up to {max(by_id, default=0)}, the model only "
            f"{size} (config vocab_size)"
        )
    tokens = tuple(by_id.get(i, f"[PAD{i}]") for i in range(size))
    types = tuple(
        CONTROL if i in control else NORMAL if i in by_id else UNUSED for i in range(size)
    )
    merges = tuple(_merge_text(m) for m in model.get("merges") or [])
    if not merges:
        raise GgufExportError(
            "tokenizer.json has no merges, which llama.cpp's gpt2 vocabulary needs; "
            "export with --vocab synthetic"
        )
    specials = _config_specials(config)
    return GgufVocab(
        model="gpt2",
        pre="gpt-2",
        tokens=tokens,
        token_types=types,
        merges=merges,
        special_ids=tuple(sorted(specials.items())),
        source="tokenizer.json",
    )


def _check_byte_level(pre: Any) -> None:
    """r3mes' pre-tokenizer: ByteLevel with GPT-2's regex (llama.cpp's "gpt-2" pre-tokenizer)."""
    if not isinstance(pre, dict) or pre.get("type") != "ByteLevel" or not pre.get("use_regex", 1):
        raise GgufExportError(
            f"tokenizer.json pre-tokenizer {pre!r} is not r3mes' byte-level one (GPT-2 regex); "
            "export with --vocab synthetic"
        )
    if pre.get("add_prefix_space"):
        raise GgufExportError("tokenizer.json adds a prefix space, which llama.cpp's gpt2 lacks")


def _merge_text(merge: Any) -> str:
    if isinstance(merge, str) and " " in merge:
        return merge
    if (
        isinstance(merge, list)
        and len(merge) == 2
        and all(isinstance(part, str) and part and " " not in part for part in merge)
    ):
        return f"{merge[0]} {merge[1]}"
    raise GgufExportError(f"tokenizer.json holds a malformed merge {merge!r}")
