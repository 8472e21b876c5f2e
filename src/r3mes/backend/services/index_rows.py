"""Rows and helpers of the index that the block projection (`services/indexer.py`) and its
readers share: the genesis index, artifact rows, block summaries, event attributes, times."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.index import IxAccount, IxArtifact, IxMeta
from r3mes.backend.services.chain_follower import ChainBlock
from r3mes.chain.genesis import Genesis
from r3mes.chain.msgs import ArtifactSpec, Msg


@dataclass
class BlockSummary:
    """What was indexed in one block: pushed to websocket clients after the commit."""

    height: int
    hash: str
    time_ms: int
    num_txs: int
    round: int
    tx_hashes: list[str] = field(default_factory=list)
    new_submissions: list[int] = field(default_factory=list)
    settled: list[dict[str, Any]] = field(default_factory=list)
    """{"submission_id", "miner", "status"} per submission settled in this block."""
    rounds_opened: list[int] = field(default_factory=list)
    rounds_closed: list[int] = field(default_factory=list)
    adapter_versions: list[int] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    """Addresses whose account, node or history changed."""

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["touched"] = sorted(self.touched)
        return doc


def attrs(event: Mapping[str, Any]) -> dict[str, str]:
    return {str(a["key"]): str(a["value"]) for a in event.get("attributes", ())}


def msg_json(msg: Msg) -> dict[str, Any]:
    doc = asdict(msg)
    return {"type": type(msg).__name__, **doc}


BEGIN_EVENTS = ("round_closed", "round_opened", "validator_penalized")


def block_time_ms(block: ChainBlock) -> int:
    """The header's millisecond time: `time_ms` where a ledger sends it, else the RFC 3339
    `time` (both engines' headers carry only that), in exact integer milliseconds."""
    raw = block.header.get("time_ms")
    if raw is not None:
        return int(raw)
    return (block.time - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


async def load_meta(session: AsyncSession) -> IxMeta | None:
    return await session.get(IxMeta, 1)


async def init_genesis(session: AsyncSession, genesis: Genesis) -> IxMeta:
    """The height-0 index: genesis accounts (numbered in order), approved artifacts."""
    meta = IxMeta(
        id=1,
        chain_id=genesis.chain_id,
        genesis_hash=genesis.hash,
        height=0,
        params=json.dumps(asdict(genesis.params), sort_keys=True),
        supply=0,
        minted=0,
        burned=0,
        next_account_number=1,
        last_block_time_ms=genesis.genesis_time_ms,
    )
    session.add(meta)
    for acc in genesis.accounts:
        session.add(
            IxAccount(
                address=acc.address,
                number=meta.next_account_number,
                balance=acc.balance,
                **account_defaults(),
            )
        )
        meta.next_account_number += 1
        meta.supply += acc.balance
    for spec in genesis.artifacts:
        row = artifact_row(spec, status="approved", by="", height=0, approved=0)
        session.add(row)
        set_active(meta, spec.kind, row.key)
    await session.flush()
    return meta


def account_defaults() -> dict[str, Any]:
    return {
        "sequence": 0,
        "pubkey": "",
        "reputation": 0,
        "earned": 0,
        "slashed": 0,
        "roles": "",
        "is_miner": False,
        "is_validator": False,
        "first_height": 0,
        "submissions": 0,
        "verified": 0,
        "rejected": 0,
        "attestations": 0,
        "attest_settled": 0,
        "attest_agreed": 0,
    }


def artifact_row(
    spec: ArtifactSpec, *, status: str, by: str, height: int, approved: int
) -> IxArtifact:
    return IxArtifact(
        key=f"{spec.kind}/{spec.id}/{spec.version:020d}",
        kind=spec.kind,
        artifact_id=spec.id,
        version=spec.version,
        cid=spec.cid,
        sha256=spec.sha256,
        size=spec.size,
        base_model_id=spec.base_model_id,
        base_model_version=spec.base_model_version,
        target_modules=json.dumps(list(spec.target_modules)),
        rank=spec.rank,
        hf_repo=spec.hf_repo,
        hf_revision=spec.hf_revision,
        status=status,
        registered_by=by,
        registered_height=height,
        approved_height=approved,
    )


def set_active(meta: IxMeta, kind: str, key: str) -> None:
    setattr(meta, f"active_{kind}", key)
