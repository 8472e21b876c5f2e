"""The private `/ws/usage` feed: the caller's credit balance and chat charges.

On connect the client gets its balance and its latest charges; then, every
`USAGE_POLL_S`, whatever changed (new or updated charges, a new balance). The gateway's
`chat_requests` rows are the charges; `credits.balance` is the balance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import select

from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.services import credits
from r3mes.backend.services.ws import encode

USAGE_POLL_S = 2.0
FIRST_CHARGES = 20


def charge_doc(row: ChatRequest) -> dict[str, Any]:
    return {
        "id": row.id,
        "model": row.model,
        "status": row.status,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "credits": row.credits,
        "node": row.node,
        "created_at": row.created_at.isoformat(),
    }


async def snapshot(
    db: Database, account_id: int, *, after_id: int | None
) -> tuple[dict[str, Any], int]:
    """(balance and charges after `after_id`, or the latest ones when None; newest id)."""
    async with db.read() as s:
        balance = await credits.balance(s, account_id=account_id)
        q = select(ChatRequest).where(ChatRequest.account_id == account_id)
        if after_id is None:
            q = q.order_by(ChatRequest.id.desc()).limit(FIRST_CHARGES)
        else:
            q = q.where(ChatRequest.id > after_id).order_by(ChatRequest.id.desc()).limit(200)
        rows = list(await s.scalars(q))
    newest = max((r.id for r in rows), default=after_id or 0)
    doc = {
        "account_id": account_id,
        "balance": {"available": balance.available, "held": balance.held},
        "charges": [charge_doc(r) for r in reversed(rows)],
    }
    return doc, newest


def usage_producer(
    db: Database, account_id: int, *, poll_s: float = USAGE_POLL_S
) -> Callable[[Callable[[str], None]], Coroutine[Any, Any, None]]:
    async def produce(push: Callable[[str], None]) -> None:
        doc, newest = await snapshot(db, account_id, after_id=None)
        push(encode("usage", "usage", doc))
        last_balance = doc["balance"]
        while True:
            await asyncio.sleep(poll_s)
            doc, newest = await snapshot(db, account_id, after_id=newest)
            if doc["charges"] or doc["balance"] != last_balance:
                last_balance = doc["balance"]
                push(encode("usage", "usage", doc))

    return produce
