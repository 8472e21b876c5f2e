"""Read side of the index: the documents the explorer routes answer.

Record documents carry every field the ledger's own REST view has under the same name
(`r3mes.chain.views`: account, round, submission, node, artifact), plus explorer fields, so
the two can be compared key by key. Lists are keyset-paginated: a page answers
`{"items": [...], "next_cursor": str | None}`, the cursor an opaque token of the last
row's sort key.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.index import (
    IxAccount,
    IxAdapterVersion,
    IxArtifact,
    IxAttestation,
    IxBlock,
    IxMeta,
    IxNode,
    IxNodeEvent,
    IxRound,
    IxSubmission,
    IxTx,
    IxTxAddress,
)
from r3mes.backend.errors import InvalidRequest, NotFound, Unavailable
from r3mes.chain.state import tier

MAX_PAGE = 200
TREND_ROUNDS = 10


def encode_cursor(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, types: Sequence[type]) -> list[Any] | None:
    """The sort key in `cursor` (None: first page); InvalidRequest if it is not ours."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
        if not isinstance(key, list) or len(key) != len(types):
            raise ValueError("wrong length")
        if not all(
            isinstance(v, t) and not isinstance(v, bool) for v, t in zip(key, types, strict=True)
        ):
            raise ValueError("wrong types")
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(
            "cursor is not valid; pass the next_cursor of the previous page"
        ) from exc
    return key


def page(items: list[dict[str, Any]], limit: int, key: Any) -> dict[str, Any]:
    """The first `limit` items and the cursor after them (`key(item)` is the sort key)."""
    more = len(items) > limit
    items = items[:limit]
    cursor = encode_cursor(key(items[-1])) if more and items else None
    return {"items": items, "next_cursor": cursor}


async def meta(s: AsyncSession) -> IxMeta:
    found = await s.get(IxMeta, 1)
    if found is None:
        raise Unavailable("the explorer has not indexed the ledger yet; retry in a few seconds")
    return found


def params_of(m: IxMeta) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(m.params)
    return doc


def current_round(m: IxMeta) -> int:
    """The ledger's `State.current_round` at the indexed height."""
    return max(m.height - 1, 0) // int(params_of(m)["round_length"]) + 1


# -- record documents (ledger field names first) ------------------------------------------


def account_doc(acc: IxAccount | None, address: str) -> dict[str, Any]:
    if acc is None:
        return {
            "address": address,
            "exists": False,
            "account_number": 0,
            "sequence": 0,
            "balance": 0,
            "pubkey": "",
            "reputation": 0,
            "tier": tier(0),
            "earned": 0,
            "slashed": 0,
            "roles": [],
        }
    settled = acc.verified + acc.rejected
    return {
        "address": acc.address,
        "exists": True,
        "account_number": acc.number,
        "sequence": acc.sequence,
        "balance": acc.balance,
        "pubkey": acc.pubkey,
        "reputation": acc.reputation,
        "tier": tier(acc.reputation),
        "earned": acc.earned,
        "slashed": acc.slashed,
        "roles": acc.roles.split(",") if acc.roles else [],
        "first_height": acc.first_height,
        "submissions": acc.submissions,
        "verified": acc.verified,
        "rejected": acc.rejected,
        "verified_rate": acc.verified / settled if settled else None,
        "attestations": acc.attestations,
        "trust_score": acc.attest_agreed / acc.attest_settled if acc.attest_settled else None,
    }


def node_doc(n: IxNode) -> dict[str, Any]:
    return {
        "address": n.address,
        "role": n.role,
        "endpoint": n.endpoint,
        "stake": n.stake,
        "registered_height": n.registered_height,
        "active": n.active,
        "last_heartbeat_ms": n.last_heartbeat_ms,
        "adapter_version": n.adapter_version,
        "capacity": n.capacity,
        "heartbeats": n.heartbeats,
    }


def submission_doc(sub: IxSubmission, atts: Sequence[IxAttestation]) -> dict[str, Any]:
    return {
        "id": sub.id,
        "round": sub.round,
        "shard": sub.shard,
        "miner": sub.miner,
        "cid": sub.cid,
        "digest": sub.digest,
        "height": sub.height,
        "status": sub.status,
        "attestations": [
            {
                "validator": a.validator,
                "verdict": a.verdict,
                "distance_ppm": a.distance_ppm,
                "height": a.height,
            }
            for a in sorted(atts, key=lambda a: a.seq)
        ],
        "residual_cid": sub.residual_cid,
        "residual_digest": sub.residual_digest,
        "base_submission_id": sub.base_submission_id,
        "trace_cid": sub.trace_cid,
        "trace_root": sub.trace_root,
        "assigned": json.loads(sub.assigned),
        "settled_height": sub.settled_height,
        "tx_hash": sub.tx_hash,
        "merged_version": sub.merged_version,
        "settlement": settlement(sub, atts),
    }


def settlement(sub: IxSubmission, atts: Sequence[IxAttestation]) -> dict[str, Any]:
    """How the assigned validators' verdicts stand: who attested, who agreed with the
    settled verdict (late ones included), who has not attested yet."""
    said = {a.validator for a in atts}
    return {
        "verdict": {"verified": "accept", "rejected": "reject"}.get(sub.status),
        "attested": len(atts),
        "agreed": sorted(a.validator for a in atts if a.agreed),
        "disagreed": sorted(a.validator for a in atts if a.agreed is False),
        "waiting": [v for v in json.loads(sub.assigned) if v not in said],
    }


def round_doc(r: IxRound, claims: list[tuple[int, str]], params: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": r.number,
        "open_height": r.open_height,
        "close_height": r.close_height,
        "seed": r.seed,
        "status": r.status,
        "base_model_id": r.base_model_id,
        "base_model_version": r.base_model_version,
        "base_model_cid": r.base_model_cid,
        "dataset_id": r.dataset_id,
        "dataset_version": r.dataset_version,
        "dataset_cid": r.dataset_cid,
        "adapter_version": r.adapter_version,
        "adapter_cid": r.adapter_cid,
        "claims": [{"shard": sh, "miner": m} for sh, m in sorted(claims)],
        "proposed_version": r.proposed_version,
        "first_submission_id": r.first_submission_id,
        "shards_per_round": params["shards_per_round"],
        "pow_difficulty": params["pow_difficulty"],
        "submissions": r.submissions,
        "verified": r.verified,
        "rejected": r.rejected,
    }


def artifact_doc(a: IxArtifact) -> dict[str, Any]:
    return {
        "id": a.artifact_id,
        "kind": a.kind,
        "version": a.version,
        "cid": a.cid,
        "sha256": a.sha256,
        "size": a.size,
        "base_model_id": a.base_model_id,
        "base_model_version": a.base_model_version,
        "target_modules": json.loads(a.target_modules),
        "rank": a.rank,
        "hf_repo": a.hf_repo,
        "hf_revision": a.hf_revision,
        "approved_height": a.approved_height,
        "status": a.status,
        "registered_by": a.registered_by,
        "registered_height": a.registered_height,
    }


def block_doc(b: IxBlock) -> dict[str, Any]:
    return {
        "height": b.height,
        "hash": b.hash,
        "time": b.time_ms,
        "proposer": b.proposer,
        "app_hash": b.app_hash,
        "num_txs": b.num_txs,
        "round": b.round,
    }


def tx_doc(t: IxTx) -> dict[str, Any]:
    return {
        "hash": t.hash,
        "height": t.height,
        "index": t.index,
        "signer": t.signer,
        "sequence": t.sequence,
        "code": t.code,
        "log": t.log,
        "msg_types": t.msg_types.split(",") if t.msg_types else [],
        "msgs": json.loads(t.msgs),
        "memo": t.memo,
        "events": json.loads(t.events),
        "time": t.time_ms,
    }


# -- single records -------------------------------------------------------------------


async def account(s: AsyncSession, address: str) -> dict[str, Any]:
    await meta(s)
    return account_doc(await s.get(IxAccount, address), address)


async def submission(s: AsyncSession, sid: int) -> dict[str, Any]:
    sub = await s.get(IxSubmission, sid)
    if sub is None:
        raise NotFound(f"no submission {sid} in the index")
    atts = await s.scalars(select(IxAttestation).where(IxAttestation.submission_id == sid))
    return submission_doc(sub, list(atts))


async def claims_of(s: AsyncSession, number: int) -> list[tuple[int, str]]:
    rows = await s.execute(
        select(IxSubmission.shard, IxSubmission.miner).where(IxSubmission.round == number)
    )
    return [(int(shard), str(miner)) for shard, miner in rows]


async def round_detail(s: AsyncSession, number: int) -> dict[str, Any]:
    m = await meta(s)
    r = await s.get(IxRound, number)
    if r is None:
        raise NotFound(
            f"round {number} does not exist yet (the current round is {current_round(m)})"
        )
    params = params_of(m)
    claims = await claims_of(s, number)
    doc = round_doc(r, claims, params)
    claimed = dict(claims)
    doc["tasks"] = [
        {"shard": i, "claimed_by": claimed.get(i)} for i in range(params["shards_per_round"])
    ]
    subs = list(
        await s.scalars(
            select(IxSubmission).where(IxSubmission.round == number).order_by(IxSubmission.id)
        )
    )
    atts = await _attestations(s, [x.id for x in subs])
    doc["submission_list"] = [submission_doc(x, atts.get(x.id, [])) for x in subs]
    return doc


async def _attestations(s: AsyncSession, ids: Sequence[int]) -> dict[int, list[IxAttestation]]:
    out: dict[int, list[IxAttestation]] = {}
    if not ids:
        return out
    rows = await s.scalars(select(IxAttestation).where(IxAttestation.submission_id.in_(list(ids))))
    for a in rows:
        out.setdefault(a.submission_id, []).append(a)
    return out


async def tx(s: AsyncSession, tx_hash: str) -> dict[str, Any]:
    digest = tx_hash.removeprefix("0x").removeprefix("0X").upper()
    if len(digest) != 64 or any(c not in "0123456789ABCDEF" for c in digest):
        raise InvalidRequest("hash must be 64 hex characters")
    # The ledger answers the latest inclusion, a successful one preferred.
    found = await s.scalars(
        select(IxTx)
        .where(IxTx.hash == digest)
        .order_by(IxTx.code != 0, IxTx.height.desc())
        .limit(1)
    )
    row = found.first()
    if row is None:
        raise NotFound(f"tx {digest} is not in the index")
    return tx_doc(row)


async def block(s: AsyncSession, height: int) -> dict[str, Any]:
    b = await s.get(IxBlock, height)
    if b is None:
        raise NotFound(f"block {height} is not in the index")
    doc = block_doc(b)
    txs = await s.scalars(select(IxTx).where(IxTx.height == height).order_by(IxTx.index))
    doc["txs"] = [tx_doc(t) for t in txs]
    return doc


# -- lists ----------------------------------------------------------------------------


async def blocks(s: AsyncSession, *, limit: int, cursor: str | None) -> dict[str, Any]:
    after = decode_cursor(cursor, (int,))
    q = select(IxBlock).order_by(IxBlock.height.desc()).limit(limit + 1)
    if after:
        q = q.where(IxBlock.height < after[0])
    rows = [block_doc(b) for b in await s.scalars(q)]
    return page(rows, limit, lambda d: [d["height"]])


async def account_txs(
    s: AsyncSession, address: str, *, limit: int, cursor: str | None
) -> dict[str, Any]:
    after = decode_cursor(cursor, (int, int))
    q = (
        select(IxTx, IxTxAddress.role)
        .join(IxTxAddress, and_(IxTxAddress.height == IxTx.height, IxTxAddress.index == IxTx.index))
        .where(IxTxAddress.address == address)
        .order_by(IxTxAddress.height.desc(), IxTxAddress.index.desc())
        .limit(limit + 1)
    )
    if after:
        q = q.where(
            or_(
                IxTxAddress.height < after[0],
                and_(IxTxAddress.height == after[0], IxTxAddress.index < after[1]),
            )
        )
    rows = [{**tx_doc(t), "role": role} for t, role in await s.execute(q)]
    return page(rows, limit, lambda d: [d["height"], d["index"]])


async def rounds(s: AsyncSession, *, limit: int, cursor: str | None) -> dict[str, Any]:
    m = await meta(s)
    after = decode_cursor(cursor, (int,))
    q = select(IxRound).order_by(IxRound.number.desc()).limit(limit + 1)
    if after:
        q = q.where(IxRound.number < after[0])
    found = list(await s.scalars(q))
    params = params_of(m)
    claims: dict[int, list[tuple[int, str]]] = {r.number: [] for r in found}
    if found:
        rows = await s.execute(
            select(IxSubmission.round, IxSubmission.shard, IxSubmission.miner).where(
                IxSubmission.round.in_(list(claims))
            )
        )
        for number, shard, miner in rows:
            claims[int(number)].append((int(shard), str(miner)))
    items = [round_doc(r, claims[r.number], params) for r in found]
    out = page(items, limit, lambda d: [d["number"]])
    out["current_round"] = current_round(m)
    out["height"] = m.height
    return out


async def submissions(
    s: AsyncSession,
    *,
    limit: int,
    cursor: str | None,
    round_number: int | None = None,
    miner: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """Newest first; filter by round, miner and/or status."""
    after = decode_cursor(cursor, (int,))
    q = select(IxSubmission).order_by(IxSubmission.id.desc()).limit(limit + 1)
    if round_number is not None:
        q = q.where(IxSubmission.round == round_number)
    if miner is not None:
        q = q.where(IxSubmission.miner == miner)
    if status is not None:
        q = q.where(IxSubmission.status == status)
    if after:
        q = q.where(IxSubmission.id < after[0])
    subs = list(await s.scalars(q))
    atts = await _attestations(s, [x.id for x in subs])
    items = [submission_doc(x, atts.get(x.id, [])) for x in subs]
    return page(items, limit, lambda d: [d["id"]])


async def adapters(s: AsyncSession, *, limit: int, cursor: str | None) -> dict[str, Any]:
    """Adapter versions newest first, each with its lineage and held-out loss vs base."""
    after = decode_cursor(cursor, (int,))
    q = select(IxAdapterVersion).order_by(IxAdapterVersion.version.desc()).limit(limit + 1)
    if after:
        q = q.where(IxAdapterVersion.version < after[0])
    items = []
    for v in await s.scalars(q):
        ids = json.loads(v.submission_ids)
        miners = await s.execute(
            select(IxSubmission.id, IxSubmission.miner).where(IxSubmission.id.in_(ids))
        )
        items.append(
            {
                "version": v.version,
                "parent_version": v.parent_version,
                "round": v.round,
                "cid": v.cid,
                "sha256": v.sha256,
                "size": v.size,
                "proposer": v.proposer,
                "height": v.height,
                "tx_hash": v.tx_hash,
                "lineage": {
                    "parent_version": v.parent_version,
                    "submissions": [{"id": i, "miner": mm} for i, mm in sorted(miners)],
                },
                "heldout_loss": v.heldout_loss,
                "base_loss": v.base_loss,
                "loss_vs_base": (
                    v.heldout_loss / v.base_loss
                    if v.heldout_loss is not None and v.base_loss
                    else None
                ),
            }
        )
    out = page(items, limit, lambda d: [d["version"]])
    arts = await s.scalars(
        select(IxArtifact).where(IxArtifact.kind == "adapter").order_by(IxArtifact.key)
    )
    out["artifacts"] = [artifact_doc(a) for a in arts]
    return out


async def artifacts(s: AsyncSession) -> list[dict[str, Any]]:
    return [artifact_doc(a) for a in await s.scalars(select(IxArtifact).order_by(IxArtifact.key))]


async def nodes(s: AsyncSession, role: str | None = None) -> list[dict[str, Any]]:
    q = select(IxNode).order_by(IxNode.role, IxNode.address)
    if role is not None:
        q = q.where(IxNode.role == role)
    return [node_doc(n) for n in await s.scalars(q)]


async def node_events(
    s: AsyncSession, address: str, *, limit: int, cursor: str | None
) -> dict[str, Any]:
    """An address's node registrations, heartbeats and staleness, newest first."""
    after = decode_cursor(cursor, (int,))
    q = (
        select(IxNodeEvent)
        .where(IxNodeEvent.address == address)
        .order_by(IxNodeEvent.id.desc())
        .limit(limit + 1)
    )
    if after:
        q = q.where(IxNodeEvent.id < after[0])
    items = [
        {
            "id": e.id,
            "height": e.height,
            "time": e.time_ms,
            "role": e.role,
            "kind": e.kind,
            "endpoint": e.endpoint,
            "stake": e.stake,
            "adapter_version": e.adapter_version,
            "capacity": e.capacity,
        }
        for e in await s.scalars(q)
    ]
    return page(items, limit, lambda d: [d["id"]])


async def count(s: AsyncSession, q: Any) -> int:
    return int((await s.execute(q)).scalar_one() or 0)


async def node_counts(s: AsyncSession) -> dict[str, int]:
    rows = await s.execute(
        select(IxNode.role, func.count()).where(IxNode.active.is_(True)).group_by(IxNode.role)
    )
    return {str(role): int(n) for role, n in rows}
