"""What a decode loop needs besides the model, without torch: the request (`GenerationConfig`),
prompt encoding, stop rules and the streamed text.

`generate` runs them with the torch model; `torchfree` with the native kernels alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from r3mes.model.errors import GenerationError
from r3mes.model.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationConfig:
    """How to continue a prompt."""

    max_new_tokens: int = 64
    """Most tokens generated per prompt."""
    temperature: float = 0.0
    """0 = greedy; otherwise logits are divided by it before sampling."""
    top_k: int | None = None
    """Sample only among the k most likely tokens."""
    top_p: float | None = None
    """Sample only among the smallest set of tokens whose probability reaches p."""
    seed: int | None = None
    """Seed of the sampling generator (None: fresh entropy)."""
    stop_strings: tuple[str, ...] = ()
    """Generation of a row stops when its text contains one; the text is cut before it."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a row (EOS always does)."""
    use_cache: bool = True
    """Reuse keys/values; False recomputes the whole sequence every step (for checking)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not 0 <= self.max_new_tokens <= 1_000_000:
            raise GenerationError(
                f"max_new_tokens must be in 0..1000000, got {self.max_new_tokens}"
            )
        if not 0.0 <= self.temperature <= 100.0:
            raise GenerationError(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            raise GenerationError(f"top_k must be positive, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop_strings, str) or not isinstance(self.stop_strings, tuple | list):
            raise GenerationError("stop_strings must be a sequence of non-empty strings")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise GenerationError("stop_strings must be a sequence of non-empty strings")
        if not isinstance(self.stop_token_ids, tuple | list) or any(
            isinstance(t, bool) or not isinstance(t, int) for t in self.stop_token_ids
        ):
            raise GenerationError("stop_token_ids must be a sequence of ints")
        # lists are accepted and stored as tuples so the config stays hashable
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """BOS followed by the prompt's token ids."""
    if not isinstance(prompt, str):
        raise GenerationError(f"prompts must be strings, got {type(prompt).__name__}")
    return [tokenizer.bos_id, *tokenizer.encode(prompt)] if prompt else [tokenizer.bos_id]


def stop_ids(tokenizer: Tokenizer, config: GenerationConfig) -> set[int]:
    """The token ids that end a row: EOS and the request's stop tokens."""
    return {tokenizer.eos_id, *config.stop_token_ids}


def cut_at_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string in `text` begins, or None."""
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that could start a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def text_pieces(
    token_ids: Iterator[int], tokenizer: Tokenizer, config: GenerationConfig
) -> Iterator[str]:
    """The text of `token_ids` piece by piece, as it grows: a piece is held back while it could
    still be the start of a stop string or an incomplete UTF-8 sequence; EOS, a stop token or a
    stop string ends it (a stop string is cut)."""
    stops = stop_ids(tokenizer, config)
    ids: list[int] = []
    emitted = 0
    text = ""
    for token in token_ids:
        if token in stops:
            break
        ids.append(token)
        text = tokenizer.decode(ids)
        cut = cut_at_stop(text, config.stop_strings)
        if cut is not None:
            if cut > emitted:
                yield text[emitted:cut]
            return
        safe = len(text) - held_back(text, config.stop_strings)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            safe = min(safe, len(text) - 1)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if len(text) > emitted:
        yield text[emitted:]
