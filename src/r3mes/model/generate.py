"""Text generation: KV cache, batched left-padded prompts, greedy or sampled, streaming.

Sampling draws from a `torch.Generator` seeded by `GenerationConfig.seed`, so a seeded run
repeats exactly. Generation stops per row at EOS, a stop token id, a stop string (cut from
the returned text) or `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from r3mes.model.errors import GenerationError
from r3mes.model.kv_cache import KVCache
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.tokenizer import Tokenizer

MAX_BATCH = 256


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


def _left_pad(
    prompts: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def _pick(logits: torch.Tensor, config: GenerationConfig, gen: torch.Generator) -> torch.Tensor:
    """Next token per row from last-position logits (B, V)."""
    if config.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= config.top_p  # keeps >= 1
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # sample on the CPU with the CPU generator, so a seed gives the same draw on any device
    probs = logits.float().softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(logits.device)


def generate_token_ids(
    model: BitNetForCausalLM,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    pad_id: int,
) -> Iterator[torch.Tensor]:
    """An iterator of the next token of every row (B,) per step; the caller decides when to stop.

    The request is checked here, before the iterator is returned (not at its first step).
    """
    rows = [list(p) for p in prompts]
    if not rows or len(rows) > MAX_BATCH or any(not r for r in rows):
        raise GenerationError(f"need 1..{MAX_BATCH} non-empty prompts")
    limit = model.config.max_position_embeddings
    longest = max(len(r) for r in rows)
    if longest + config.max_new_tokens > limit:
        raise GenerationError(
            f"prompt ({longest} tokens) plus max_new_tokens ({config.max_new_tokens}) exceeds "
            f"the model's {limit} positions; shorten either"
        )
    return _decode_steps(model, rows, config, pad_id=pad_id)


@torch.no_grad()
def _decode_steps(
    model: BitNetForCausalLM, rows: list[list[int]], config: GenerationConfig, *, pad_id: int
) -> Iterator[torch.Tensor]:
    gen = torch.Generator()
    if config.seed is not None:
        gen.manual_seed(config.seed)
    else:
        gen.seed()
    model.eval()
    device = model.lm_head.weight.device
    ids, mask, positions = (t.to(device) for t in _left_pad(rows, pad_id))
    cache = KVCache(model.config.num_hidden_layers) if config.use_cache else None
    step_ids, step_pos = ids, positions
    for _ in range(config.max_new_tokens):
        logits = model(
            step_ids, attention_mask=mask, position_ids=step_pos, kv_cache=cache, last_only=True
        )
        token = _pick(logits[:, -1], config, gen)
        yield token.cpu()
        next_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if cache is not None:
            step_ids, step_pos = token[:, None], next_pos
        else:
            ids = torch.cat([ids, token[:, None]], dim=1)
            positions = torch.cat([positions, next_pos], dim=1)
            step_ids, step_pos = ids, positions


def _encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    if not isinstance(prompt, str):
        raise GenerationError(f"prompts must be strings, got {type(prompt).__name__}")
    return [tokenizer.bos_id, *tokenizer.encode(prompt)] if prompt else [tokenizer.bos_id]


def _stop_ids(tokenizer: Tokenizer, config: GenerationConfig) -> set[int]:
    return {tokenizer.eos_id, *config.stop_token_ids}


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


def generate(
    model: BitNetForCausalLM, tokenizer: Tokenizer, prompts: list[str], config: GenerationConfig
) -> list[str]:
    """The continuation text of each prompt (prompt not included)."""
    encoded = [_encode_prompt(tokenizer, p) for p in prompts]
    stop_ids = _stop_ids(tokenizer, config)
    out: list[list[int]] = [[] for _ in prompts]
    texts: list[str | None] = [None] * len(prompts)  # set once a row is finished
    for tokens in generate_token_ids(model, encoded, config, pad_id=tokenizer.pad_id):
        for row, token in enumerate(tokens.tolist()):
            if texts[row] is not None:
                continue
            if token in stop_ids:
                texts[row] = tokenizer.decode(out[row])
                continue
            out[row].append(token)
            if config.stop_strings:
                text = tokenizer.decode(out[row])
                cut = _cut_at_stop(text, config.stop_strings)
                if cut is not None:
                    texts[row] = text[:cut]
        if all(t is not None for t in texts):
            break
    return [t if t is not None else tokenizer.decode(o) for t, o in zip(texts, out, strict=True)]


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that could start a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def stream_generate(
    model: BitNetForCausalLM, tokenizer: Tokenizer, prompt: str, config: GenerationConfig
) -> Iterator[str]:
    """The continuation of `prompt` piece by piece; the pieces join to `generate`'s text.

    A bad request (prompt too long for max_new_tokens, ...) raises here, before any piece.
    """
    steps = generate_token_ids(
        model, [_encode_prompt(tokenizer, prompt)], config, pad_id=tokenizer.pad_id
    )
    return _pieces(steps, tokenizer, config)


def _pieces(
    steps: Iterator[torch.Tensor], tokenizer: Tokenizer, config: GenerationConfig
) -> Iterator[str]:
    stop_ids = _stop_ids(tokenizer, config)
    ids: list[int] = []
    emitted = 0
    text = ""
    for tokens in steps:
        token = int(tokens[0])
        if token in stop_ids:
            break
        ids.append(token)
        text = tokenizer.decode(ids)
        cut = _cut_at_stop(text, config.stop_strings)
        if cut is not None:
            if cut > emitted:
                yield text[emitted:cut]
            return
        safe = len(text) - _held_back(text, config.stop_strings)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            safe = min(safe, len(text) - 1)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if len(text) > emitted:
        yield text[emitted:]
