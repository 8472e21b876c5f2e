"""Per-request sampling: parameters, next-token choice and incremental detokenisation.

Every request owns a `torch.Generator` seeded from its own seed, so a seeded request gives
the same tokens whatever else shares its batch. Greedy decoding (temperature 0) is an argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from r3mes.serve.errors import InvalidRequest

MAX_STOP_STRINGS = 16  # the API takes 8 from the client; chat adds its role markers
MAX_STOP_LENGTH = 128


@dataclass(frozen=True)
class SamplingParams:
    """How one request chooses its tokens and when it stops."""

    max_tokens: int = 128
    """Most tokens to generate (the prompt not counted)."""
    temperature: float = 0.0
    """0 means greedy; otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = no limit)."""
    seed: int | None = None
    """Seed of this request's generator; None draws one at random."""
    stop: tuple[str, ...] = field(default_factory=tuple)
    """Strings that end the output; they are not included in it."""
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    """Token ids that end the output (the EOS id is one unless ignore_eos)."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks: every request runs max_tokens)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= 1_000_000:
            raise InvalidRequest("max_tokens must be between 1 and 1000000", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequest("temperature must be between 0 and 2", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        if self.top_k < 0:
            raise InvalidRequest("top_k must be 0 (off) or positive", param="top_k")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequest("seed must be between 0 and 2**63 - 1", param="seed")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest(f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
        if any(not s or len(s) > MAX_STOP_LENGTH for s in self.stop):
            raise InvalidRequest(
                f"stop strings must be 1 to {MAX_STOP_LENGTH} characters", param="stop"
            )

    def make_generator(self) -> torch.Generator:
        """A CPU generator seeded from `seed` (or from fresh entropy when it is None)."""
        gen = torch.Generator(device="cpu")
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick the next token from one row of logits (V,) according to `params`."""
    logits = logits.float()
    if params.temperature == 0.0:
        return int(torch.argmax(logits).item())
    scaled = logits / params.temperature
    if params.top_k > 0 and params.top_k < scaled.numel():
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator).item())


class IncrementalText:
    """Turns a stream of token ids into text deltas, honouring stop strings.

    Decoding is incremental (only the last few ids are decoded per token, as in TGI): a
    token's text is settled once it decodes to complete characters (no trailing U+FFFD).
    Settled text that could still be the start of a stop string is held back until the
    next token decides it.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str]) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] give the context for decoding the next ones
        self._read = 0
        self._emitted = 0
        self.text = ""
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to emit (maybe empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self._settle(after[len(before) :])
        self._prefix, self._read = self._read, len(self._ids)
        if self.stopped:
            return self._take(len(self.text))
        return self._take(len(self.text) - self._holdback)

    def flush(self) -> str:
        """At the end of generation: return everything not yet emitted."""
        if not self.stopped and self._read < len(self._ids):
            before = self._decode(self._ids[self._prefix : self._read])
            self._settle(self._decode(self._ids[self._prefix :])[len(before) :])
        return self._take(len(self.text))

    def _settle(self, delta: str) -> None:
        start = max(0, len(self.text) - self._holdback)
        self.text += delta
        hits = [i for s in self._stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _take(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta = self.text[self._emitted : upto]
        self._emitted = upto
        return delta
