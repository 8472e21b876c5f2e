"""Roll the gateway's `chat_requests` up into per-day, per-model totals for analytics.

Analytics over raw request rows costs what the log holds (hundreds of milliseconds at a
few hundred thousand rows); the rollup makes it cost what the answer holds. The roller
reads rows in id order past its watermark (`ix_chat_rollup.last_id`), but only ids it saw
at least `SETTLE_S` ago: an id allocated by a transaction that has not committed yet is
not skipped for good (PostgreSQL sequences hand ids out before commit). Distinct users per
day and model are exact: `ix_chat_users` holds the set, and `active_users` grows only when
a new member is inserted. So analytics lags the chat log by about `SETTLE_S` + one poll.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from typing import Any

from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.db.index import (
    IxChatDaily,
    IxChatNode,
    IxChatRollup,
    IxChatUser,
    IxChatUserLast,
)

log = logging.getLogger(__name__)

SETTLE_S = 10.0
POLL_S = 5.0
BATCH = 5000


def _day(value: dt.datetime) -> dt.date:
    if value.tzinfo is None:  # SQLite hands back naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).date()


async def roll_up(s: AsyncSession, *, upto_id: int) -> int:
    """Fold chat rows with watermark < id <= `upto_id` into the rollup; returns how many."""
    state = await s.get(IxChatRollup, 1)
    if state is None:
        state = IxChatRollup(id=1, last_id=0)
        s.add(state)
    rows = list(
        await s.execute(
            select(
                ChatRequest.id,
                ChatRequest.account_id,
                ChatRequest.model,
                ChatRequest.status,
                ChatRequest.prompt_tokens,
                ChatRequest.completion_tokens,
                ChatRequest.credits,
                ChatRequest.created_at,
                ChatRequest.node,
            )
            .where(ChatRequest.id > state.last_id, ChatRequest.id <= upto_id)
            .order_by(ChatRequest.id)
            .limit(BATCH)
        )
    )
    if not rows:
        return 0
    totals: dict[tuple[dt.date, str], list[int]] = {}
    users: set[tuple[dt.date, str, int]] = set()
    last_day: dict[int, dt.date] = {}
    served: dict[str, list[int]] = {}
    for _id, account, model, status, prompt, completion, credits, created, node in rows:
        if node and status == "ok":
            n = served.setdefault(node, [0, 0, 0])
            n[0] += 1
            n[1] += prompt + completion
            n[2] += credits
        day = _day(created)
        t = totals.setdefault((day, model), [0, 0, 0, 0, 0, 0])
        t[0] += 1
        t[1] += status != "ok"
        t[2] += prompt
        t[3] += completion
        t[4] += credits
        users.add((day, model, int(account)))
        last_day[int(account)] = max(day, last_day.get(int(account), day))
    known = set(
        await s.execute(
            select(IxChatUser.day, IxChatUser.model, IxChatUser.account_id).where(
                tuple_(IxChatUser.day, IxChatUser.model).in_(list(totals)),
                IxChatUser.account_id.in_(list(last_day)),
            )
        )
    )
    new = sorted(users - {(d, m, int(a)) for d, m, a in known})
    if new:
        await s.execute(
            insert(IxChatUser), [{"day": d, "model": m, "account_id": a} for d, m, a in new]
        )
    for day, model, _account in new:
        totals[(day, model)][5] += 1
    await _add_totals(s, totals)
    await _touch_users(s, last_day)
    await _add_served(s, served)
    state.last_id = int(rows[-1][0])
    await s.flush()
    return len(rows)


async def _add_totals(s: AsyncSession, totals: dict[tuple[dt.date, str], list[int]]) -> None:
    found = {
        (r.day, r.model): r
        for r in await s.scalars(
            select(IxChatDaily).where(tuple_(IxChatDaily.day, IxChatDaily.model).in_(list(totals)))
        )
    }
    for (day, model), (n, errors, prompt, completion, credits, new_users) in totals.items():
        row = found.get((day, model))
        if row is None:
            row = IxChatDaily(
                day=day,
                model=model,
                requests=0,
                errors=0,
                prompt_tokens=0,
                completion_tokens=0,
                credits=0,
                active_users=0,
            )
            s.add(row)
        row.requests += n
        row.errors += errors
        row.prompt_tokens += prompt
        row.completion_tokens += completion
        row.credits += credits
        row.active_users += new_users


async def _add_served(s: AsyncSession, served: dict[str, list[int]]) -> None:
    for node, (requests, tokens, credits) in served.items():
        row = await s.get(IxChatNode, node)
        if row is None:
            row = IxChatNode(node=node, requests=0, tokens=0, credits=0)
            s.add(row)
        row.requests += requests
        row.tokens += tokens
        row.credits += credits


async def _touch_users(s: AsyncSession, last_day: dict[int, dt.date]) -> None:
    """Raise each account's last active day: one UPDATE per distinct day, one bulk INSERT."""
    known = set(
        await s.scalars(
            select(IxChatUserLast.account_id).where(IxChatUserLast.account_id.in_(list(last_day)))
        )
    )
    fresh = [{"account_id": a, "last_day": d} for a, d in last_day.items() if a not in known]
    if fresh:
        await s.execute(insert(IxChatUserLast), fresh)
    by_day: dict[dt.date, list[int]] = {}
    for account, day in last_day.items():
        if account in known:
            by_day.setdefault(day, []).append(account)
    for day, accounts in by_day.items():
        await s.execute(
            update(IxChatUserLast)
            .where(IxChatUserLast.account_id.in_(accounts), IxChatUserLast.last_day < day)
            .values(last_day=day)
        )


class ChatRoller:
    """The rollup worker: remembers when it first saw each max id (see SETTLE_S)."""

    def __init__(self, db: Database, *, settle_s: float = SETTLE_S, poll_s: float = POLL_S) -> None:
        self.db = db
        self.settle_s = settle_s
        self.poll_s = poll_s
        self._seen: deque[tuple[float, int]] = deque()

    async def step(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        async with self.db.read() as s:
            newest = int(await s.scalar(select(func.coalesce(func.max(ChatRequest.id), 0))) or 0)
        self._seen.append((now, newest))
        settled = 0
        while self._seen and self._seen[0][0] <= now - self.settle_s:
            settled = max(settled, self._seen.popleft()[1])
        if self._seen and settled:
            self._seen.appendleft((now - self.settle_s, settled))
        if not settled:
            return 0
        done = 0
        while True:
            async with self.db.write() as s, s.begin():
                n = await roll_up(s, upto_id=settled)
            done += n
            if n < BATCH:
                return done

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("chat rollup failed; retrying")
            await asyncio.sleep(self.poll_s)


def chat_rows_json(rows: Any) -> list[dict[str, Any]]:
    return [
        {
            "model": r.model,
            "requests": r.requests,
            "errors": r.errors,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "credits": r.credits,
            "active_users": r.active_users,
        }
        for r in rows
    ]
