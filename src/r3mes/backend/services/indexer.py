"""The indexer: projects each ledger block into the `ix_*` tables, inside the caller's
write transaction (the chain follower's, together with its cursor).

The ledger's state machine is deterministic, so a block's transactions, their results and
events, the genesis document and the params say exactly what changed: this module replays
those effects on the indexed rows (the same rules as `r3mes.chain.handlers`, in the same
order, so account numbers, balances, reputations and stakes stay equal to the ledger's) and
appends the history the ledger does not keep. `ix_meta.height` must be the block's height
minus one; a block at or below it is skipped, so a replayed block never counts twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.index import (
    IxAccount,
    IxAdapterVersion,
    IxArtifact,
    IxAttestation,
    IxBlock,
    IxDaily,
    IxMeta,
    IxNode,
    IxNodeEvent,
    IxReward,
    IxRound,
    IxSlash,
    IxSubmission,
    IxTx,
    IxTxAddress,
)
from r3mes.backend.services.chain_follower import ChainBlock, ChainTx
from r3mes.backend.services.index_rows import (
    BEGIN_EVENTS,
    BlockSummary,
    account_defaults,
    artifact_row,
    attrs,
    block_time_ms,
    init_genesis,
    load_meta,
    msg_json,
    set_active,
    utc,
)
from r3mes.chain.errors import TxDecodeError
from r3mes.chain.genesis import Genesis, Params
from r3mes.chain.msgs import (
    ApproveArtifact,
    ArtifactSpec,
    Attest,
    Faucet,
    ProposeAdapter,
    RegisterArtifact,
    RegisterNode,
    ServingHeartbeat,
    SubmitGradient,
    TransferCredits,
)
from r3mes.chain.tx import SignedTx, decode_tx

log = logging.getLogger(__name__)


class IndexGap(Exception):
    """The block cannot be indexed on top of the index (a gap, or another chain)."""


class BlockIndexer:
    """Applies one block to the index within `session` (see the module docstring)."""

    def __init__(self, session: AsyncSession, meta: IxMeta, block: ChainBlock) -> None:
        self.s = session
        self.meta = meta
        self.block = block
        self.params = Params(**json.loads(meta.params))
        self.time_ms = block_time_ms(block)
        self.day = utc(self.time_ms).date()
        self.daily: IxDaily | None = None
        self.summary = BlockSummary(
            height=block.height,
            hash=block.hash.lower(),
            time_ms=self.time_ms,
            num_txs=len(block.txs),
            round=(block.height - 1) // self.params.round_length + 1,
        )

    # -- rows -------------------------------------------------------------------------

    async def account(self, address: str) -> IxAccount:
        """The account, created with the next account number if new (ledger.account)."""
        acc = await self.s.get(IxAccount, address)
        if acc is None:
            acc = IxAccount(
                address=address,
                number=self.meta.next_account_number,
                balance=0,
                **{**account_defaults(), "first_height": self.block.height},
            )
            self.meta.next_account_number += 1
            self.s.add(acc)
        self.summary.touched.add(address)
        return acc

    async def day_row(self) -> IxDaily:
        if self.daily is None:
            row = await self.s.get(IxDaily, self.day)
            if row is None:
                row = IxDaily(
                    day=self.day,
                    blocks=0,
                    txs=0,
                    submissions=0,
                    verified=0,
                    rejected=0,
                    rewards=0,
                    slashes=0,
                )
                self.s.add(row)
            self.daily = row
        return self.daily

    async def round_row(self, number: int) -> IxRound | None:
        return await self.s.get(IxRound, number)

    async def artifact(self, key: str) -> IxArtifact | None:
        return await self.s.get(IxArtifact, key) if key else None

    async def mint_reward(
        self, address: str, amount: int, reputation: int, *, kind: str, rnd: int, sid: int = 0
    ) -> None:
        acc = await self.account(address)
        acc.balance += amount
        acc.earned += amount
        acc.reputation += reputation
        self.meta.supply += amount
        self.meta.minted += amount
        self.s.add(
            IxReward(
                height=self.block.height,
                address=address,
                kind=kind,
                amount=amount,
                reputation=reputation,
                round=rnd,
                submission_id=sid,
            )
        )
        (await self.day_row()).rewards += amount

    async def node_event(self, node: IxNode, kind: str) -> None:
        self.s.add(
            IxNodeEvent(
                height=self.block.height,
                address=node.address,
                role=node.role,
                kind=kind,
                endpoint=node.endpoint,
                stake=node.stake,
                adapter_version=node.adapter_version,
                capacity=node.capacity,
                time_ms=self.time_ms,
            )
        )
        self.summary.touched.add(node.address)

    async def refresh_roles(self, address: str) -> None:
        rows = await self.s.scalars(select(IxNode.role).where(IxNode.address == address))
        roles = sorted(set(rows))
        acc = await self.account(address)
        acc.roles = ",".join(roles)
        acc.is_miner = "miner" in roles
        acc.is_validator = "validator" in roles

    # -- the block --------------------------------------------------------------------

    async def run(self) -> BlockSummary:
        b = self.block
        # Block-level events: round bookkeeping ran before the txs, staleness after them.
        for ev in b.events:
            if ev.get("type") in BEGIN_EVENTS:
                await self.begin_event(ev)
        day = await self.day_row()
        day.blocks += 1
        day.txs += len(b.txs)
        for index, tx in enumerate(b.txs):
            await self.index_tx(index, tx)
        for ev in b.events:
            if ev.get("type") not in BEGIN_EVENTS:
                await self.end_event(ev)
        self.s.add(
            IxBlock(
                height=b.height,
                hash=b.hash.lower(),
                time=utc(self.time_ms),
                time_ms=self.time_ms,
                proposer=b.proposer,
                app_hash=str(b.header.get("app_hash", "")).lower(),
                num_txs=len(b.txs),
                round=self.summary.round,
            )
        )
        self.meta.height = b.height
        self.meta.last_block_time_ms = self.time_ms
        await self.s.flush()
        return self.summary

    async def begin_event(self, ev: Mapping[str, Any]) -> None:
        a = attrs(ev)
        if ev["type"] == "round_closed":
            rnd = await self.round_row(int(a["round"]))
            if rnd is not None:
                rnd.status = "closed"
            self.summary.rounds_closed.append(int(a["round"]))
        elif ev["type"] == "round_opened":
            await self.open_round(int(a["round"]), a["seed"])

    async def open_round(self, number: int, seed: str) -> None:
        model = await self.artifact(self.meta.active_model)
        dataset = await self.artifact(self.meta.active_dataset)
        adapter = await self.artifact(self.meta.active_adapter)
        self.s.add(
            IxRound(
                number=number,
                open_height=self.block.height,
                close_height=self.block.height + self.params.round_length - 1,
                seed=seed,
                status="open",
                base_model_id=model.artifact_id if model else "",
                base_model_version=model.version if model else 0,
                base_model_cid=model.cid if model else "",
                dataset_id=dataset.artifact_id if dataset else "",
                dataset_version=dataset.version if dataset else 0,
                dataset_cid=dataset.cid if dataset else "",
                adapter_version=adapter.version if adapter else 0,
                adapter_cid=adapter.cid if adapter else "",
                proposed_version=0,
                submissions=0,
                verified=0,
                rejected=0,
            )
        )
        self.summary.rounds_opened.append(number)

    async def end_event(self, ev: Mapping[str, Any]) -> None:
        if ev["type"] == "serving_node_stale":
            node = await self.s.get(IxNode, ("serving", attrs(ev)["address"]))
            if node is not None:
                node.active = False
                await self.node_event(node, "stale")

    async def index_tx(self, index: int, tx: ChainTx) -> None:
        b = self.block
        decoded: SignedTx | None
        try:
            decoded = decode_tx(tx.raw)
        except TxDecodeError:
            decoded = None
        events = list(tx.events)
        # deliver_tx: the signer's sequence and pubkey change once authentication passed,
        # which the result shows by its leading "message" event (even if a message failed).
        authenticated = bool(events) and events[0].get("type") == "message"
        signer = attrs(events[0]).get("sender", "") if authenticated else ""
        msgs = decoded.msgs if decoded is not None else ()
        self.s.add(
            IxTx(
                height=b.height,
                index=index,
                hash=tx.hash.upper(),
                signer=signer,
                sequence=decoded.sequence if decoded is not None else 0,
                code=tx.code,
                log=tx.log,
                msg_types=",".join(type(m).__name__ for m in msgs)[:512],
                msgs=json.dumps([msg_json(m) for m in msgs]),
                memo=decoded.memo if decoded is not None else "",
                events=json.dumps(events),
                time_ms=self.time_ms,
            )
        )
        self.summary.tx_hashes.append(tx.hash.upper())
        addresses = {signer: "signer"} if signer else {}
        if authenticated and decoded is not None:
            acc = await self.account(signer)
            acc.sequence += 1
            acc.pubkey = decoded.pubkey.hex()
        if tx.code == 0 and decoded is not None:
            await self.apply_msgs(decoded, tx, events[1:])
            for m in msgs:
                if isinstance(m, TransferCredits | Faucet):
                    addresses.setdefault(m.to, "recipient")
        for address, role in addresses.items():
            self.s.add(IxTxAddress(address=address, height=b.height, index=index, role=role))
            self.summary.touched.add(address)

    async def apply_msgs(
        self, decoded: SignedTx, tx: ChainTx, events: Sequence[Mapping[str, Any]]
    ) -> None:
        """Each message's writes, reading what the handlers decided from their events."""
        pos = 0
        for msg in decoded.msgs:
            ev = attrs(events[pos]) if pos < len(events) else {}
            pos += 1
            if isinstance(msg, Attest):
                settled = events[pos] if pos < len(events) else None
                if settled is not None and settled.get("type") in (
                    "submission_verified",
                    "submission_rejected",
                ):
                    pos += 1
                    await self.attest(msg, attrs(settled))
                else:
                    await self.attest(msg, None)
            elif isinstance(msg, RegisterNode):
                await self.register_node(msg)
            elif isinstance(msg, SubmitGradient):
                await self.submit(msg, int(ev["submission_id"]), tx.hash)
            elif isinstance(msg, ProposeAdapter):
                await self.propose(msg, tx.hash)
            elif isinstance(msg, RegisterArtifact):
                spec = msg.artifact
                self.s.add(
                    artifact_row(
                        spec, status="pending", by=msg.creator, height=self.block.height, approved=0
                    )
                )
            elif isinstance(msg, ApproveArtifact):
                key = f"{msg.kind}/{msg.id}/{msg.version:020d}"
                art = await self.artifact(key)
                if art is not None:
                    art.status = "approved"
                    art.approved_height = self.block.height
                set_active(self.meta, msg.kind, key)
            elif isinstance(msg, ServingHeartbeat):
                await self.heartbeat(msg)
            elif isinstance(msg, TransferCredits):
                (await self.account(msg.creator)).balance -= msg.amount
                (await self.account(msg.to)).balance += msg.amount
            elif isinstance(msg, Faucet):
                (await self.account(msg.to)).balance += msg.amount
                self.meta.supply += msg.amount
                self.meta.minted += msg.amount

    async def register_node(self, msg: RegisterNode) -> None:
        node = await self.s.get(IxNode, (msg.role, msg.creator))
        if msg.stake:
            (await self.account(msg.creator)).balance -= msg.stake
        if node is None:
            node = IxNode(
                role=msg.role,
                address=msg.creator,
                endpoint=msg.endpoint,
                stake=msg.stake,
                registered_height=self.block.height,
                active=True,
                last_heartbeat_ms=self.time_ms,
                adapter_version=0,
                capacity=0,
                heartbeats=0,
            )
            self.s.add(node)
            await self.s.flush()
        else:
            node.endpoint = msg.endpoint
            node.stake += msg.stake
            node.active = True
        await self.node_event(node, "register")
        await self.refresh_roles(msg.creator)

    async def heartbeat(self, msg: ServingHeartbeat) -> None:
        node = await self.s.get(IxNode, ("serving", msg.creator))
        if node is None:
            raise IndexGap(f"heartbeat from {msg.creator}, which the index has no node for")
        node.endpoint = msg.endpoint or node.endpoint
        node.adapter_version = msg.adapter_version
        node.capacity = msg.capacity
        node.last_heartbeat_ms = self.time_ms
        node.active = True
        node.heartbeats += 1
        await self.node_event(node, "heartbeat")

    async def submit(self, msg: SubmitGradient, sid: int, tx_hash: str) -> None:
        self.s.add(
            IxSubmission(
                id=sid,
                round=msg.round,
                shard=msg.shard,
                miner=msg.creator,
                cid=msg.cid,
                digest=msg.digest,
                height=self.block.height,
                status="pending",
                settled_height=0,
                tx_hash=tx_hash.upper(),
                merged_version=0,
            )
        )
        (await self.account(msg.creator)).submissions += 1
        rnd = await self.round_row(msg.round)
        if rnd is not None:
            rnd.submissions += 1
        (await self.day_row()).submissions += 1
        self.summary.new_submissions.append(sid)

    async def attest(self, msg: Attest, settled: dict[str, str] | None) -> None:
        sub = await self.s.get(IxSubmission, msg.submission_id)
        if sub is None:
            raise IndexGap(f"attestation on submission {msg.submission_id}, not indexed")
        earlier = list(
            await self.s.scalars(
                select(IxAttestation)
                .where(IxAttestation.submission_id == sub.id)
                .order_by(IxAttestation.seq)
            )
        )
        att = IxAttestation(
            submission_id=sub.id,
            validator=msg.creator,
            seq=len(earlier) + 1,
            verdict=msg.verdict,
            distance_ppm=msg.distance_ppm,
            height=self.block.height,
            round=sub.round,
            agreed=None,
        )
        self.s.add(att)
        (await self.account(msg.creator)).attestations += 1
        self.summary.touched.add(sub.miner)
        if settled is not None:
            await self.settle(sub, [*earlier, att], msg.verdict, settled)

    async def settle(
        self,
        sub: IxSubmission,
        attestations: list[IxAttestation],
        verdict: str,
        event: dict[str, str],
    ) -> None:
        """`handlers._settle`: reward the winning validators, then reward or slash the miner."""
        p = self.params
        votes = [a for a in attestations if a.verdict == verdict]
        for vote in votes:
            await self.mint_reward(
                vote.validator,
                p.validator_reward,
                p.reputation_gain_validator,
                kind="validator",
                rnd=sub.round,
                sid=sub.id,
            )
        sub.status = "verified" if verdict == "accept" else "rejected"
        sub.settled_height = self.block.height
        miner = await self.account(sub.miner)
        rnd = await self.round_row(sub.round)
        day = await self.day_row()
        if sub.status == "verified":
            await self.mint_reward(
                sub.miner,
                p.miner_reward,
                p.reputation_gain_miner,
                kind="miner",
                rnd=sub.round,
                sid=sub.id,
            )
            miner.verified += 1
            day.verified += 1
            if rnd is not None:
                rnd.verified += 1
        else:
            burned = int(event.get("burned", "0"))
            node = await self.s.get(IxNode, ("miner", sub.miner))
            if node is not None:
                node.stake -= burned
            self.meta.supply -= burned
            self.meta.burned += burned
            before = miner.reputation
            miner.reputation = max(0, miner.reputation - p.reputation_penalty)
            miner.slashed += burned
            miner.rejected += 1
            day.rejected += 1
            day.slashes += burned
            if rnd is not None:
                rnd.rejected += 1
            self.s.add(
                IxSlash(
                    height=self.block.height,
                    address=sub.miner,
                    submission_id=sub.id,
                    round=sub.round,
                    burned=burned,
                    reputation_lost=before - miner.reputation,
                )
            )
        for a in attestations:
            a.agreed = a.verdict == verdict
            validator = await self.account(a.validator)
            validator.attest_settled += 1
            validator.attest_agreed += int(a.agreed)
        self.summary.settled.append(
            {"submission_id": sub.id, "miner": sub.miner, "status": sub.status}
        )

    async def propose(self, msg: ProposeAdapter, tx_hash: str) -> None:
        current = await self.artifact(self.meta.active_adapter)
        model = await self.artifact(self.meta.active_model)
        spec = ArtifactSpec(
            kind="adapter",
            id=self.params.adapter_id,
            version=msg.version,
            cid=msg.adapter_cid,
            sha256=msg.sha256,
            size=msg.size,
            base_model_id=model.artifact_id if model else "",
            base_model_version=model.version if model else 0,
            target_modules=tuple(json.loads(current.target_modules)) if current else (),
            rank=current.rank if current else 0,
        )
        row = artifact_row(
            spec,
            status="approved",
            by=msg.creator,
            height=self.block.height,
            approved=self.block.height,
        )
        await self.s.merge(row)
        set_active(self.meta, "adapter", row.key)
        rnd = await self.round_row(msg.round)
        if rnd is not None:
            rnd.proposed_version = msg.version
        p = self.params
        await self.mint_reward(
            msg.creator,
            p.proposer_reward,
            p.reputation_gain_proposer,
            kind="proposer",
            rnd=msg.round,
        )
        self.s.add(
            IxAdapterVersion(
                version=msg.version,
                parent_version=msg.parent_version,
                round=msg.round,
                cid=msg.adapter_cid,
                sha256=msg.sha256,
                size=msg.size,
                proposer=msg.creator,
                height=self.block.height,
                tx_hash=tx_hash.upper(),
                submission_ids=json.dumps(list(msg.submission_ids)),
                heldout_loss=None,
                base_loss=None,
            )
        )
        for sid in msg.submission_ids:
            sub = await self.s.get(IxSubmission, sid)
            if sub is not None:
                sub.merged_version = msg.version
        self.summary.adapter_versions.append(msg.version)


async def index_block(
    session: AsyncSession, block: ChainBlock, *, genesis: Genesis | None = None
) -> BlockSummary | None:
    """Index `block` in `session`'s transaction; None if it was indexed already.

    The index must stand at `block.height - 1` (height 0 is created from `genesis` on the
    first block); anything else is an IndexGap (a gap the caller must fill first).
    """
    meta = await load_meta(session)
    if meta is None:
        if genesis is None:
            raise IndexGap("the index is empty; the genesis document is needed first")
        meta = await init_genesis(session, genesis)
    if block.chain_id and block.chain_id != meta.chain_id:
        raise IndexGap(
            f"block {block.height} is from chain {block.chain_id!r} but the index holds "
            f"{meta.chain_id!r}; point the backend at its own database for another chain"
        )
    if block.height <= meta.height:
        return None
    if block.height != meta.height + 1:
        raise IndexGap(f"block {block.height} does not follow the index at {meta.height}")
    return await BlockIndexer(session, meta, block).run()
