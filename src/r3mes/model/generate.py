"""Text generation: KV cache, batched left-padded prompts, greedy or sampled, streaming.

Sampling draws from a `torch.Generator` seeded by `GenerationConfig.seed`, so a seeded run
repeats exactly. Generation stops per row at EOS, a stop token id, a stop string (cut from
the returned text) or `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from r3mes.model.decoding import (
    GenerationConfig,
    cut_at_stop,
    encode_prompt,
    stop_ids,
    text_pieces,
)
from r3mes.model.errors import GenerationError
from r3mes.model.kv_cache import KVCache
from r3mes.model.modeling import BitNetForCausalLM
from r3mes.model.tokenizer import Tokenizer

__all__ = ["GenerationConfig", "generate", "generate_token_ids", "stream_generate"]

MAX_BATCH = 256


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


def generate(
    model: BitNetForCausalLM, tokenizer: Tokenizer, prompts: list[str], config: GenerationConfig
) -> list[str]:
    """The continuation text of each prompt (prompt not included)."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    stops = stop_ids(tokenizer, config)
    out: list[list[int]] = [[] for _ in prompts]
    texts: list[str | None] = [None] * len(prompts)  # set once a row is finished
    for tokens in generate_token_ids(model, encoded, config, pad_id=tokenizer.pad_id):
        for row, token in enumerate(tokens.tolist()):
            if texts[row] is not None:
                continue
            if token in stops:
                texts[row] = tokenizer.decode(out[row])
                continue
            out[row].append(token)
            if config.stop_strings:
                text = tokenizer.decode(out[row])
                cut = cut_at_stop(text, config.stop_strings)
                if cut is not None:
                    texts[row] = text[:cut]
        if all(t is not None for t in texts):
            break
    return [t if t is not None else tokenizer.decode(o) for t, o in zip(texts, out, strict=True)]


def stream_generate(
    model: BitNetForCausalLM, tokenizer: Tokenizer, prompt: str, config: GenerationConfig
) -> Iterator[str]:
    """The continuation of `prompt` piece by piece; the pieces join to `generate`'s text.

    A bad request (prompt too long for max_new_tokens, ...) raises here, before any piece.
    """
    steps = generate_token_ids(
        model, [encode_prompt(tokenizer, prompt)], config, pad_id=tokenizer.pad_id
    )
    return text_pieces((int(tokens[0]) for tokens in steps), tokenizer, config)
