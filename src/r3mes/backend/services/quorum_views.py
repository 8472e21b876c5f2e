"""Read side of the quorum ledger's records in the index (issue 17): adapter proposals and
their attestations, disputes, stake on its way out, validator penalties and slashes.

Documents carry the ledger's own field names (`r3mes.chain.views.proposal_json`,
`dispute_json`, `stake_json`) where the index mirrors them, so the two can be compared
key by key; `DISPUTE_FIELDS` are the dispute fields the index mirrors (the parties'
intermediate digests and deadlines stay on the ledger).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.index import (
    IxDispute,
    IxNode,
    IxProposal,
    IxProposalAttestation,
    IxSlash,
    IxUnbonding,
    IxValidatorPenalty,
)
from r3mes.backend.errors import NotFound
from r3mes.backend.services import explorer
from r3mes.backend.services.explorer import decode_cursor, meta, page

DISPUTE_FIELDS = (
    "id",
    "submission_id",
    "claimant",
    "respondent",
    "steps",
    "lo",
    "hi",
    "rounds",
    "status",
    "referees",
    "lo_cid",
    "winner",
    "opened_height",
    "open",
)
"""The ledger's dispute fields (`views.dispute_json`) the index keeps equal."""


def proposal_doc(p: IxProposal, atts: Sequence[IxProposalAttestation]) -> dict[str, Any]:
    return {
        "round": p.round,
        "proposer": p.proposer,
        "spec": json.loads(p.spec),
        "parent_version": p.parent_version,
        "submission_ids": json.loads(p.submission_ids),
        "height": p.height,
        "assigned": json.loads(p.assigned),
        "attestations": [
            {"validator": a.validator, "verdict": a.verdict, "distance_ppm": 0, "height": a.height}
            for a in sorted(atts, key=lambda a: a.seq)
        ],
        "status": p.status,
        "version": p.version,
        "cid": p.cid,
        "sha256": p.sha256,
        "tx_hash": p.tx_hash,
        "decided_height": p.decided_height,
        "burned": p.burned,
    }


async def _with_attestations(s: AsyncSession, props: Sequence[IxProposal]) -> list[dict[str, Any]]:
    """`proposal_doc` of each of `props`, their attestations loaded in one query."""
    atts: dict[int, list[IxProposalAttestation]] = {p.id: [] for p in props}
    if props:
        rows = await s.scalars(
            select(IxProposalAttestation).where(IxProposalAttestation.proposal_id.in_(list(atts)))
        )
        for a in rows:
            atts[a.proposal_id].append(a)
    return [proposal_doc(p, atts[p.id]) for p in props]


async def proposals_of_round(s: AsyncSession, number: int) -> list[dict[str, Any]]:
    """Every proposal made for round `number`, oldest first (the ledger keeps the latest)."""
    props = await s.scalars(
        select(IxProposal).where(IxProposal.round == number).order_by(IxProposal.id)
    )
    return await _with_attestations(s, list(props))


async def proposals(
    s: AsyncSession,
    *,
    limit: int,
    cursor: str | None,
    status: str | None = None,
    proposer: str | None = None,
) -> dict[str, Any]:
    """Adapter proposals of every round, newest first; `status` one of the ledger's
    (pending, approved, rejected, stale), `proposer` one address's. Each item carries `id`,
    the index's order."""
    await meta(s)
    after = decode_cursor(cursor, (int,))
    q = select(IxProposal).order_by(IxProposal.id.desc()).limit(limit + 1)
    if status is not None:
        q = q.where(IxProposal.status == status)
    if proposer is not None:
        q = q.where(IxProposal.proposer == proposer)
    if after:
        q = q.where(IxProposal.id < after[0])
    props = list(await s.scalars(q))
    items = [
        {"id": p.id, **doc}
        for p, doc in zip(props, await _with_attestations(s, props), strict=True)
    ]
    return page(items, limit, lambda d: [d["id"]])


async def round_detail(s: AsyncSession, number: int) -> dict[str, Any]:
    """`explorer.round_detail` plus the round's adapter proposals: `proposal` is the latest
    (the ledger's `/proposals/{round}`), `proposals` all of them, oldest first."""
    doc = await explorer.round_detail(s, number)
    proposals = await proposals_of_round(s, number)
    doc["proposals"] = proposals
    doc["proposal"] = proposals[-1] if proposals else None
    return doc


def dispute_doc(d: IxDispute) -> dict[str, Any]:
    return {
        "id": d.submission_id,
        "submission_id": d.submission_id,
        "round": d.round,
        "miner": d.miner,
        "claimant": d.claimant,
        "respondent": d.respondent,
        "opener": d.opener,
        "steps": d.steps,
        "lo": d.lo,
        "hi": d.hi,
        "rounds": d.rounds,
        "status": d.status,
        "referees": json.loads(d.referees),
        "lo_cid": d.lo_cid,
        "votes": d.votes,
        "winner": d.winner,
        "loser": d.loser,
        "burned": d.burned,
        "reason": d.reason,
        "opened_height": d.opened_height,
        "resolved_height": d.resolved_height,
        "tx_hash": d.tx_hash,
        "open": d.status != "resolved",
    }


async def dispute(s: AsyncSession, dispute_id: int) -> dict[str, Any]:
    await meta(s)
    d = await s.get(IxDispute, dispute_id)
    if d is None:
        raise NotFound(f"no dispute {dispute_id} in the index")
    return dispute_doc(d)


async def disputes(
    s: AsyncSession,
    *,
    limit: int,
    cursor: str | None,
    status: str | None = None,
    party: str | None = None,
) -> dict[str, Any]:
    """Disputes newest first; `status` "open" or "resolved"; `party` a claimant/respondent."""
    await meta(s)
    after = decode_cursor(cursor, (int,))
    q = select(IxDispute).order_by(IxDispute.submission_id.desc()).limit(limit + 1)
    if status == "open":
        q = q.where(IxDispute.status != "resolved")
    elif status == "resolved":
        q = q.where(IxDispute.status == "resolved")
    if party is not None:
        q = q.where(or_(IxDispute.claimant == party, IxDispute.respondent == party))
    if after:
        q = q.where(IxDispute.submission_id < after[0])
    items = [dispute_doc(d) for d in await s.scalars(q)]
    return page(items, limit, lambda d: [d["id"]])


async def stake(s: AsyncSession, address: str) -> dict[str, Any]:
    """`views.stake_json`: bonded per role and still unbonding (slashable), plus history."""
    await meta(s)
    nodes = list(
        await s.scalars(select(IxNode).where(IxNode.address == address).order_by(IxNode.role))
    )
    entries = list(
        await s.scalars(
            select(IxUnbonding).where(IxUnbonding.address == address).order_by(IxUnbonding.id)
        )
    )
    pending = [e for e in entries if e.withdrawn_height == 0 and e.amount > 0]
    return {
        "address": address,
        "bonded": [{"role": n.role, "stake": n.stake, "active": n.active} for n in nodes],
        "unbonding": [
            {"role": e.role, "amount": e.amount, "release_height": e.release_height}
            for e in pending
        ],
        "total": sum(n.stake for n in nodes) + sum(e.amount for e in pending),
        "history": [
            {
                "role": e.role,
                "unbonded": e.unbonded,
                "amount": e.amount,
                "height": e.height,
                "release_height": e.release_height,
                "withdrawn_height": e.withdrawn_height,
            }
            for e in reversed(entries[-50:])
        ],
    }


async def penalties(s: AsyncSession, address: str, *, limit: int = 20) -> list[dict[str, Any]]:
    """Reputation a validator lost when attestation windows closed, newest first."""
    rows = await s.scalars(
        select(IxValidatorPenalty)
        .where(IxValidatorPenalty.address == address)
        .order_by(IxValidatorPenalty.id.desc())
        .limit(limit)
    )
    return [
        {
            "height": p.height,
            "submission_id": p.submission_id,
            "round": p.round,
            "reason": p.reason,
            "reputation_lost": p.reputation_lost,
        }
        for p in rows
    ]


async def slashes(s: AsyncSession, address: str, *, limit: int = 20) -> list[dict[str, Any]]:
    rows = await s.scalars(
        select(IxSlash).where(IxSlash.address == address).order_by(IxSlash.id.desc()).limit(limit)
    )
    return [
        {
            "height": x.height,
            "submission_id": x.submission_id,
            "round": x.round,
            "burned": x.burned,
            "reputation_lost": x.reputation_lost,
            "reason": x.reason,
        }
        for x in rows
    ]
