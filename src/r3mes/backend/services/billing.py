"""Billing to the token: prices, the most a request can cost, and settling what it did cost.

A request's hold is its worst case: an upper bound of its prompt tokens plus the completion
tokens it may generate (`max_tokens`, clamped to the configured cap). After the node answers,
the usage it reported is captured (never more than held) and the rest released, in the same
transaction that records the request in `chat_requests` with the node that served it.

Cost of a request: `ceil((prompt_tokens * prompt_per_1k + completion_tokens *
completion_per_1k) / 1000)` credits, integers only.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Insert, insert
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.base import table_of
from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.settings import BackendSettings, ChatPrice

TEMPLATE_TOKENS_PER_MESSAGE = 8
"""Chat-template tokens (role markers, separators) counted per message in the bound."""
TEMPLATE_TOKENS_BASE = 16


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def price_of(settings: BackendSettings, model: str) -> ChatPrice:
    """The price of `model` (a pinned `name@version` costs what `name` costs)."""
    name = model.partition("@")[0]
    return settings.chat_prices.get(name, settings.chat_default_price)


def cost(price: ChatPrice, usage: Usage) -> int:
    """Credits for `usage` at `price`, rounded up to a whole credit."""
    milli = usage.prompt_tokens * price.prompt_per_1k
    milli += usage.completion_tokens * price.completion_per_1k
    return -(-milli // 1000)


def prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound of the prompt's tokens without the tokenizer.

    Byte-level BPE never makes more tokens than UTF-8 bytes, so the byte count of every text
    is a bound; the chat template adds a few tokens per message.
    """
    if "messages" in body:
        total = TEMPLATE_TOKENS_BASE
        for message in body["messages"]:
            content = message.get("content", "")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            total += len(str(content).encode()) + TEMPLATE_TOKENS_PER_MESSAGE
        return total
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = "".join(str(p) for p in prompt)
    return len(str(prompt).encode()) + 4


def request_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def record_in(
    conn: Connection,
    *,
    request_id: str,
    account_id: int,
    key_id: int | None,
    model: str,
    node: str | None,
    status: str,
    usage: Usage,
    credits: int,
    latency_ms: int,
) -> None:
    """Insert the request's `chat_requests` row (inside the caller's transaction)."""
    conn.execute(
        _insert_request(),
        {
            "request_id": request_id,
            "account_id": account_id,
            "key_id": key_id,
            "model": model[:160],
            "node": node,
            "status": status,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "credits": credits,
            "created_at": datetime.now(UTC),
            "latency_ms": latency_ms,
        },
    )


@functools.cache
def _insert_request() -> Insert:
    """Built once: the hot path executes it with parameters."""
    return insert(table_of(ChatRequest))


async def record(session: AsyncSession, **row: Any) -> None:
    """`record_in` inside an `AsyncSession`'s transaction."""
    await session.run_sync(lambda s: record_in(s.connection(), **row))


def usage_from(doc: Any) -> Usage | None:
    """The `usage` object of an OpenAI-shaped answer, if it is well formed."""
    if not isinstance(doc, dict):
        return None
    raw = doc.get("usage")
    if not isinstance(raw, dict):
        return None
    try:
        prompt = int(raw["prompt_tokens"])
        completion = int(raw["completion_tokens"])
    except (KeyError, TypeError, ValueError):
        return None
    if prompt < 0 or completion < 0:
        return None
    return Usage(prompt, completion)


def canonical_json(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
