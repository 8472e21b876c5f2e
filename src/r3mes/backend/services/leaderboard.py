"""Ranked and aggregated explorer answers: network stats, leaderboards, operator pages,
serving nodes and analytics.

Definitions (also in docs/backend.md):
- verified rate: verified / (verified + rejected) submissions of a miner (None before any
  settled);
- trend: a miner's verified and rejected submissions in each of the last N rounds;
- trust score: the share of a validator's attestations on settled submissions that matched
  the final verdict;
- uptime: the share of the last N rounds with submissions in which the validator attested
  at least once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, distinct, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.db.index import (
    IxAccount,
    IxAttestation,
    IxChatDaily,
    IxChatNode,
    IxChatUserLast,
    IxDaily,
    IxMeta,
    IxNode,
    IxReward,
    IxRound,
    IxSubmission,
)
from r3mes.backend.errors import InvalidRequest, NotFound
from r3mes.backend.services import explorer, quorum_views
from r3mes.backend.services.chat_rollup import chat_rows_json
from r3mes.backend.services.explorer import account_doc, decode_cursor, node_doc, page
from r3mes.chain.state import tier
from r3mes.chain.vocab import ROLES


async def network_stats(s: AsyncSession) -> dict[str, Any]:
    m = await explorer.meta(s)
    since = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=29)

    def total(column: Any) -> Any:
        return select(func.coalesce(func.sum(column), 0)).scalar_subquery()

    def active_nodes(role: str) -> Any:
        return (
            select(func.count())
            .select_from(IxNode)
            .where(IxNode.role == role, IxNode.active.is_(True))
            .scalar_subquery()
        )

    # One round trip: under load every extra query costs a scheduling delay.
    row = (
        await s.execute(
            select(
                total(IxDaily.submissions),
                total(IxDaily.verified),
                total(IxDaily.rejected),
                total(IxDaily.txs),
                select(func.count())
                .select_from(IxChatUserLast)
                .where(IxChatUserLast.last_day >= since)
                .scalar_subquery(),
                *(active_nodes(role) for role in ROLES),
            )
        )
    ).one()
    submissions, verified, rejected, txs, chat_users, *counts = (int(x) for x in row)
    active = dict(zip(ROLES, counts, strict=True))
    return {
        "chain_id": m.chain_id,
        "height": m.height,
        "round": explorer.current_round(m),
        "block_time": m.last_block_time_ms,
        "active_miners": active.get("miner", 0),
        "active_validators": active.get("validator", 0),
        "active_proposers": active.get("proposer", 0),
        "active_serving_nodes": active.get("serving", 0),
        "submissions": submissions,
        "verified": verified,
        "rejected": rejected,
        "verified_rate": verified / (verified + rejected) if verified + rejected else None,
        "txs": txs,
        "credits_in_circulation": m.supply,
        "minted": m.minted,
        "burned": m.burned,
        "chat_users_30d": chat_users,
    }


async def _trend(
    s: AsyncSession, miners: list[str], first_round: int
) -> dict[str, list[dict[str, int]]]:
    out: dict[str, list[dict[str, int]]] = {m: [] for m in miners}
    if not miners:
        return out
    rows = await s.execute(
        select(IxSubmission.miner, IxSubmission.round, IxSubmission.status, func.count())
        .where(IxSubmission.miner.in_(miners), IxSubmission.round >= first_round)
        .group_by(IxSubmission.miner, IxSubmission.round, IxSubmission.status)
    )
    per: dict[tuple[str, int], dict[str, int]] = {}
    for miner, rnd, status, n in rows:
        entry = per.setdefault(
            (miner, int(rnd)), {"round": int(rnd), "verified": 0, "rejected": 0, "pending": 0}
        )
        entry[str(status)] = int(n)
    for (miner, _), entry in sorted(per.items()):
        out[miner].append(entry)
    return out


async def _stakes(s: AsyncSession, role: str, addresses: list[str]) -> dict[str, IxNode]:
    if not addresses:
        return {}
    rows = await s.scalars(select(IxNode).where(IxNode.role == role, IxNode.address.in_(addresses)))
    return {n.address: n for n in rows}


async def miners(s: AsyncSession, *, limit: int, cursor: str | None, rounds: int) -> dict[str, Any]:
    """Registered miners by (reputation, earnings) descending, address ascending."""
    m = await explorer.meta(s)
    after = decode_cursor(cursor, (int, int, str, int))
    q = (
        select(IxAccount)
        .where(IxAccount.is_miner.is_(True))
        .order_by(IxAccount.reputation.desc(), IxAccount.earned.desc(), IxAccount.address)
        .limit(limit + 1)
    )
    rank = 0
    if after:
        rep, earned, address, rank = after
        q = q.where(
            or_(
                IxAccount.reputation < rep,
                and_(IxAccount.reputation == rep, IxAccount.earned < earned),
                and_(
                    IxAccount.reputation == rep,
                    IxAccount.earned == earned,
                    IxAccount.address > address,
                ),
            )
        )
    accs = list(await s.scalars(q))
    addresses = [a.address for a in accs]
    trend = await _trend(s, addresses, explorer.current_round(m) - rounds + 1)
    nodes = await _stakes(s, "miner", addresses)
    items = []
    for i, a in enumerate(accs):
        doc = _rank_doc(a, rank + i + 1)
        node = nodes.get(a.address)
        doc.update(
            stake=node.stake if node else 0,
            active=bool(node and node.active),
            trend=trend[a.address],
        )
        items.append(doc)
    return page(items, limit, lambda d: [d["reputation"], d["earned"], d["address"], d["rank"]])


def _rank_doc(a: IxAccount, rank: int) -> dict[str, Any]:
    settled = a.verified + a.rejected
    return {
        "rank": rank,
        "address": a.address,
        "reputation": a.reputation,
        "tier": tier(a.reputation),
        "earned": a.earned,
        "slashed": a.slashed,
        "submissions": a.submissions,
        "verified": a.verified,
        "rejected": a.rejected,
        "verified_rate": a.verified / settled if settled else None,
    }


async def validators(
    s: AsyncSession, *, limit: int, cursor: str | None, rounds: int
) -> dict[str, Any]:
    """Registered validators by agreed attestations descending (then address)."""
    m = await explorer.meta(s)
    after = decode_cursor(cursor, (int, str, int))
    q = (
        select(IxAccount)
        .where(IxAccount.is_validator.is_(True))
        .order_by(IxAccount.attest_agreed.desc(), IxAccount.address)
        .limit(limit + 1)
    )
    rank = 0
    if after:
        agreed, address, rank = after
        q = q.where(
            or_(
                IxAccount.attest_agreed < agreed,
                and_(IxAccount.attest_agreed == agreed, IxAccount.address > address),
            )
        )
    accs = list(await s.scalars(q))
    addresses = [a.address for a in accs]
    uptime = await _uptime(s, addresses, explorer.current_round(m), rounds)
    nodes = await _stakes(s, "validator", addresses)
    items = []
    for i, a in enumerate(accs):
        node = nodes.get(a.address)
        items.append(
            {
                "rank": rank + i + 1,
                "address": a.address,
                "agreed": a.attest_agreed,
                "trust_score": a.attest_agreed / a.attest_settled if a.attest_settled else None,
                "attestations": a.attestations,
                "settled_attestations": a.attest_settled,
                "uptime": uptime[a.address],
                "stake": node.stake if node else 0,
                "active": bool(node and node.active),
                "reputation": a.reputation,
                "earned": a.earned,
            }
        )
    return page(items, limit, lambda d: [d["agreed"], d["address"], d["rank"]])


async def _uptime(
    s: AsyncSession, validators_: list[str], current: int, rounds: int
) -> dict[str, float | None]:
    first = max(1, current - rounds + 1)
    busy = await explorer.count(
        s,
        select(func.count())
        .select_from(IxRound)
        .where(IxRound.number >= first, IxRound.submissions > 0),
    )
    out: dict[str, float | None] = dict.fromkeys(validators_)
    if not validators_ or not busy:
        return out
    rows = await s.execute(
        select(IxAttestation.validator, func.count(distinct(IxAttestation.round)))
        .where(IxAttestation.validator.in_(validators_), IxAttestation.round >= first)
        .group_by(IxAttestation.validator)
    )
    seen = {str(v): int(n) for v, n in rows}
    return {v: min(1.0, seen.get(v, 0) / busy) for v in validators_}


async def _meta_account_node(
    s: AsyncSession, address: str, role: str
) -> tuple[IxMeta, IxAccount, IxNode]:
    """The index meta, the account and its node of `role`, in one round trip."""
    row = (
        await s.execute(
            select(IxMeta, IxAccount, IxNode)
            .select_from(IxMeta)
            .join(IxAccount, IxAccount.address == address)
            .join(IxNode, (IxNode.address == IxAccount.address) & (IxNode.role == role))
            .where(IxMeta.id == 1)
        )
    ).one_or_none()
    if row is None:
        await explorer.meta(s)  # 503 if nothing is indexed yet
        raise NotFound(f"{address} is not a registered {role}")
    return row[0], row[1], row[2]


async def miner(s: AsyncSession, address: str, *, rounds: int) -> dict[str, Any]:
    m, acc, node = await _meta_account_node(s, address, "miner")
    doc = account_doc(acc, address)
    doc["node"] = node_doc(node)
    doc["trend"] = (await _trend(s, [address], explorer.current_round(m) - rounds + 1))[address]
    doc["recent_submissions"] = (
        await explorer.submissions(s, limit=20, cursor=None, miner=address)
    )["items"]
    doc["recent_rewards"] = [
        {
            "height": r.height,
            "kind": r.kind,
            "amount": r.amount,
            "round": r.round,
            "submission_id": r.submission_id,
        }
        for r in await s.scalars(
            select(IxReward)
            .where(IxReward.address == address)
            .order_by(IxReward.id.desc())
            .limit(20)
        )
    ]
    doc["slashes"] = await quorum_views.slashes(s, address)
    doc["disputes"] = (await quorum_views.disputes(s, limit=20, cursor=None, party=address))[
        "items"
    ]
    doc["stake"] = await quorum_views.stake(s, address)
    return doc


async def validator(s: AsyncSession, address: str, *, rounds: int) -> dict[str, Any]:
    m, acc, node = await _meta_account_node(s, address, "validator")
    doc = account_doc(acc, address)
    doc["node"] = node_doc(node)
    doc["uptime"] = (await _uptime(s, [address], explorer.current_round(m), rounds))[address]
    recent = await s.scalars(
        select(IxAttestation)
        .where(IxAttestation.validator == address)
        .order_by(IxAttestation.round.desc(), IxAttestation.submission_id.desc())
        .limit(20)
    )
    doc["recent_attestations"] = [
        {
            "submission_id": a.submission_id,
            "round": a.round,
            "verdict": a.verdict,
            "distance_ppm": a.distance_ppm,
            "height": a.height,
            "agreed": a.agreed,
        }
        for a in recent
    ]
    doc["penalties"] = await quorum_views.penalties(s, address)
    doc["slashes"] = await quorum_views.slashes(s, address)
    doc["disputes"] = (await quorum_views.disputes(s, limit=20, cursor=None, party=address))[
        "items"
    ]
    doc["stake"] = await quorum_views.stake(s, address)
    return doc


async def serving(s: AsyncSession) -> dict[str, Any]:
    """Serving nodes: liveness from the ledger, load and served tokens from paid chat (all-time
    totals from the chat rollup, the last hour from the chat log)."""
    m = await explorer.meta(s)
    params = explorer.params_of(m)
    nodes = list(
        await s.scalars(select(IxNode).where(IxNode.role == "serving").order_by(IxNode.address))
    )
    served: dict[str, tuple[int, int, int]] = {}
    if nodes:
        addresses = [n.address for n in nodes]
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        recent = await s.execute(
            select(ChatRequest.node, func.count())
            .where(
                ChatRequest.created_at >= since,
                ChatRequest.node.in_(addresses),
                ChatRequest.status == "ok",
            )
            .group_by(ChatRequest.node)
        )
        hour = {str(node): int(count) for node, count in recent}
        totals = await s.scalars(select(IxChatNode).where(IxChatNode.node.in_(addresses)))
        served = {t.node: (t.requests, t.tokens, hour.get(t.node, 0)) for t in totals}
        for node, count in hour.items():
            served.setdefault(node, (0, 0, count))
    items = []
    for n in nodes:
        requests, tokens, last_hour = served.get(n.address, (0, 0, 0))
        age = m.last_block_time_ms - n.last_heartbeat_ms
        items.append(
            {
                **node_doc(n),
                "heartbeat_age_ms": age,
                "live": n.active and age <= int(params["serving_stale_after_ms"]),
                "served_requests": requests,
                "served_tokens": tokens,
                "requests_last_hour": last_hour,
                "load": last_hour / (n.capacity * 60) if n.capacity else None,
            }
        )
    return {"height": m.height, "nodes": items}


async def analytics(s: AsyncSession, *, days: int) -> dict[str, Any]:
    """Per UTC day: chat (per model, from the rollup) and network totals, oldest first."""
    if not 1 <= days <= 366:
        raise InvalidRequest("days must be in [1, 366]")
    today = dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    chat: dict[str, list[dict[str, Any]]] = {}
    rows = await s.scalars(
        select(IxChatDaily).where(IxChatDaily.day >= first).order_by(IxChatDaily.model)
    )
    for daily in rows:
        chat.setdefault(str(daily.day), []).extend(chat_rows_json([daily]))
    network = {str(d.day): d for d in await s.scalars(select(IxDaily).where(IxDaily.day >= first))}
    out: list[dict[str, Any]] = []
    for i in range(days):
        day = first + dt.timedelta(days=i)
        key = day.isoformat()
        row = network.get(key)
        models: list[dict[str, Any]] = sorted(chat.get(key, []), key=_model_name)
        out.append(
            {
                "day": key,
                "chat": models,
                "network": {
                    "blocks": row.blocks if row else 0,
                    "txs": row.txs if row else 0,
                    "submissions": row.submissions if row else 0,
                    "verified": row.verified if row else 0,
                    "rejected": row.rejected if row else 0,
                    "rewards": row.rewards if row else 0,
                    "slashes": row.slashes if row else 0,
                },
            }
        )
    return {"days": out}


def _model_name(entry: dict[str, Any]) -> str:
    return str(entry["model"])
