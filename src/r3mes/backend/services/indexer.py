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
from dataclasses import asdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.index import (
    IxAccount,
    IxAdapterVersion,
    IxArtifact,
    IxAttestation,
    IxBlock,
    IxDaily,
    IxDispute,
    IxMeta,
    IxNode,
    IxNodeEvent,
    IxProposal,
    IxProposalAttestation,
    IxReward,
    IxRound,
    IxSlash,
    IxSubmission,
    IxTx,
    IxTxAddress,
    IxUnbonding,
    IxValidatorPenalty,
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
from r3mes.chain.assign import assignment_seed, draw
from r3mes.chain.errors import TxDecodeError
from r3mes.chain.genesis import Genesis, Params
from r3mes.chain.msgs import (
    ApproveArtifact,
    ArtifactSpec,
    Attest,
    AttestAdapter,
    DisputeCheckpoint,
    DisputeVerdict,
    Faucet,
    Msg,
    OpenDispute,
    ProposeAdapter,
    RegisterArtifact,
    RegisterNode,
    ServingHeartbeat,
    SubmitGradient,
    TransferCredits,
    Unbond,
    Withdraw,
)
from r3mes.chain.tx import SignedTx, decode_tx

log = logging.getLogger(__name__)

LEAD_EVENTS: dict[str, type[Any]] = {
    "register_node": RegisterNode,
    "submit_gradient": SubmitGradient,
    "attest": Attest,
    "adapter_proposed": ProposeAdapter,
    "attest_adapter": AttestAdapter,
    "register_artifact": RegisterArtifact,
    "approve_artifact": ApproveArtifact,
    "serving_heartbeat": ServingHeartbeat,
    "transfer": TransferCredits,
    "faucet": Faucet,
    "unbond": Unbond,
    "withdraw": Withdraw,
    "dispute_opened": OpenDispute,
    "dispute_vote": DisputeVerdict,
}
"""The first event each message's handler emits (`DisputeCheckpoint` has none of its own)."""
DISPUTE_EVENTS = (
    "dispute_checkpoint",
    "dispute_digest",
    "dispute_narrowed",
    "dispute_referee",
    "dispute_resolved",
)
SETTLED_VERDICT = {"verified": "accept", "rejected": "reject"}


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
        elif ev["type"] == "validator_penalized":
            await self.validator_penalized(a)

    async def open_round(self, number: int, seed: str) -> None:
        model = await self.artifact(self.meta.active_model)
        dataset = await self.artifact(self.meta.active_dataset)
        adapter = await self.artifact(self.meta.active_adapter)
        last = await self.s.scalar(select(func.max(IxSubmission.id)))
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
                first_submission_id=int(last or 0) + 1,
            )
        )
        self.summary.rounds_opened.append(number)

    async def end_event(self, ev: Mapping[str, Any]) -> None:
        if ev["type"] == "dispute_resolved":  # a missed deadline (`expire_disputes`)
            await self.resolve_dispute(await self.dispute(int(attrs(ev)["dispute_id"])), attrs(ev))
        elif ev["type"] == "serving_node_stale":
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
        """Each message's writes, reading what the handlers decided from their events.

        Every message but `DisputeCheckpoint` opens its events with one lead event
        (`LEAD_EVENTS`); what follows it (a settlement, a decided proposal, a dispute's
        progress) is applied by type, in the ledger's order. A `DisputeCheckpoint` may emit
        nothing; its effects are all in the dispute events themselves.
        """
        queue = [m for m in decoded.msgs if not isinstance(m, DisputeCheckpoint)]
        current: Msg | None = None
        for ev in events:
            kind = str(ev.get("type", ""))
            a = attrs(ev)
            lead = LEAD_EVENTS.get(kind)
            if lead is not None:
                if not queue or not isinstance(queue[0], lead):
                    raise IndexGap(
                        f"tx {tx.hash}: event {kind} does not match its messages; "
                        "the index and the ledger disagree on the transaction rules"
                    )
                current = queue.pop(0)
                await self.apply_msg(current, a, tx)
            else:
                await self.follow_up(kind, a, current, tx)

    async def apply_msg(self, msg: Msg, a: dict[str, str], tx: ChainTx) -> None:
        if isinstance(msg, Attest):
            await self.attest(msg)
        elif isinstance(msg, RegisterNode):
            await self.register_node(msg)
        elif isinstance(msg, SubmitGradient):
            await self.submit(msg, int(a["submission_id"]), tx.hash)
        elif isinstance(msg, ProposeAdapter):
            await self.propose(msg, a, tx.hash)
        elif isinstance(msg, AttestAdapter):
            await self.attest_adapter(msg)
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
        elif isinstance(msg, Unbond):
            await self.unbond(msg, int(a["release"]))
        elif isinstance(msg, Withdraw):
            await self.withdraw(msg.creator, int(a["amount"]))
        elif isinstance(msg, OpenDispute):
            await self.open_dispute(msg, a, tx.hash)
        elif isinstance(msg, DisputeVerdict):
            dispute = await self.dispute(msg.dispute_id)
            dispute.votes += 1

    async def follow_up(
        self, kind: str, a: dict[str, str], current: Msg | None, tx: ChainTx
    ) -> None:
        """An event after a message's lead event (see `apply_msgs`)."""
        if kind in ("submission_verified", "submission_rejected"):
            if not isinstance(current, Attest):
                raise IndexGap(f"tx {tx.hash}: {kind} without an attestation")
            await self.settle(int(a["submission_id"]), current.verdict)
        elif kind in ("adapter_approved", "adapter_rejected", "adapter_stale"):
            if not isinstance(current, AttestAdapter):
                raise IndexGap(f"tx {tx.hash}: {kind} without an adapter attestation")
            await self.decide_proposal(current, kind.removeprefix("adapter_"))
        elif kind in DISPUTE_EVENTS:
            await self.dispute_event(kind, a)

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
        rnd = await self.round_row(msg.round)
        assigned = await self.assign(rnd.seed if rnd else "", sid, exclude=msg.creator)
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
                residual_cid=msg.residual_cid,
                residual_digest=msg.residual_digest,
                base_submission_id=msg.base_submission_id,
                trace_cid=msg.trace_cid,
                trace_root=msg.trace_root,
                assigned=json.dumps(list(assigned)),
            )
        )
        (await self.account(msg.creator)).submissions += 1
        if rnd is not None:
            rnd.submissions += 1
        (await self.day_row()).submissions += 1
        self.summary.new_submissions.append(sid)

    async def assign(
        self, round_seed: str, number: int, *, exclude: str, kind: str = "submission"
    ) -> tuple[str, ...]:
        """`handlers.assign_validators` over the indexed nodes (equal to the ledger's)."""
        rows = await self.s.execute(
            select(IxNode.address, IxNode.stake).where(
                IxNode.role == "validator", IxNode.active.is_(True), IxNode.address != exclude
            )
        )
        candidates = [(str(address), int(stake)) for address, stake in rows]
        seed = assignment_seed(round_seed, kind, number)
        return draw(candidates, seed=seed, n=self.params.validators_per_submission)

    async def attestations_of(self, sid: int) -> list[IxAttestation]:
        return list(
            await self.s.scalars(
                select(IxAttestation)
                .where(IxAttestation.submission_id == sid)
                .order_by(IxAttestation.seq)
            )
        )

    async def attest(self, msg: Attest) -> None:
        """`handlers.attest`: record it; a late one (after the quorum) is paid if it agrees."""
        sub = await self.s.get(IxSubmission, msg.submission_id)
        if sub is None:
            raise IndexGap(f"attestation on submission {msg.submission_id}, not indexed")
        if sub.assigned == "[]":  # no validator was registered at submission: assigned now
            rnd = await self.round_row(sub.round)
            assigned = await self.assign(rnd.seed if rnd else "", sub.id, exclude=sub.miner)
            sub.assigned = json.dumps(list(assigned))
        earlier = await self.attestations_of(sub.id)
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
        validator = await self.account(msg.creator)
        validator.attestations += 1
        self.summary.touched.add(sub.miner)
        verdict = SETTLED_VERDICT.get(sub.status)
        if verdict is not None:  # late: judged against the settled verdict
            att.agreed = msg.verdict == verdict
            validator.attest_settled += 1
            validator.attest_agreed += int(att.agreed)
            if att.agreed:
                p = self.params
                await self.mint_reward(
                    msg.creator,
                    p.validator_reward,
                    p.reputation_gain_validator,
                    kind="validator",
                    rnd=sub.round,
                    sid=sub.id,
                )

    async def settle(self, sid: int, verdict: str) -> None:
        """`handlers._settle`: reward the quorum's validators, then reward or slash the miner."""
        sub = await self.s.get(IxSubmission, sid)
        if sub is None:
            raise IndexGap(f"settlement of submission {sid}, not indexed")
        await self.s.flush()
        attestations = await self.attestations_of(sid)
        p = self.params
        for vote in (a for a in attestations if a.verdict == verdict):
            await self.mint_reward(
                vote.validator,
                p.validator_reward,
                p.reputation_gain_validator,
                kind="validator",
                rnd=sub.round,
                sid=sub.id,
            )
        sub.settled_height = self.block.height
        if verdict == "accept":
            await self.verify_submission(sub)
        else:
            await self.reject_submission(sub, reason="rejected")
        for a in attestations:
            a.agreed = a.verdict == verdict
            validator = await self.account(a.validator)
            validator.attest_settled += 1
            validator.attest_agreed += int(a.agreed)
        self.summary.settled.append(
            {"submission_id": sub.id, "miner": sub.miner, "status": sub.status}
        )

    async def verify_submission(self, sub: IxSubmission) -> None:
        p = self.params
        sub.status = "verified"
        await self.mint_reward(
            sub.miner,
            p.miner_reward,
            p.reputation_gain_miner,
            kind="miner",
            rnd=sub.round,
            sid=sub.id,
        )
        (await self.account(sub.miner)).verified += 1
        (await self.day_row()).verified += 1
        rnd = await self.round_row(sub.round)
        if rnd is not None:
            rnd.verified += 1

    async def reject_submission(self, sub: IxSubmission, *, reason: str) -> None:
        sub.status = "rejected"
        node = await self.s.get(IxNode, ("miner", sub.miner))
        burned = await self.burn_stake(node, self.params.slash_amount) if node else 0
        await self.penalize(sub.miner, burned, reason=reason, sid=sub.id, rnd=sub.round)
        (await self.account(sub.miner)).rejected += 1
        (await self.day_row()).rejected += 1
        rnd = await self.round_row(sub.round)
        if rnd is not None:
            rnd.rejected += 1

    async def penalize(self, address: str, burned: int, *, reason: str, sid: int, rnd: int) -> None:
        """What every slashing does to the account: reputation_penalty (floored at 0) and
        the stake `burn_stake` burned; recorded as a slash."""
        acc = await self.account(address)
        before = acc.reputation
        acc.reputation = max(0, acc.reputation - self.params.reputation_penalty)
        acc.slashed += burned
        self.s.add(
            IxSlash(
                height=self.block.height,
                address=address,
                submission_id=sid,
                round=rnd,
                burned=burned,
                reputation_lost=before - acc.reputation,
                reason=reason,
            )
        )

    async def burn_stake(self, node: IxNode, amount: int) -> int:
        """`ledger.burn_stake`: up to `amount` of the node's stake, then of the same role's
        stake still unbonding (newest first); returns what was burned."""
        burned = min(node.stake, amount)
        node.stake -= burned
        if burned < amount:
            entries = await self.s.scalars(
                select(IxUnbonding)
                .where(
                    IxUnbonding.address == node.address,
                    IxUnbonding.withdrawn_height == 0,
                    IxUnbonding.amount > 0,
                )
                .order_by(IxUnbonding.id.desc())
            )
            for entry in entries:
                if entry.role != node.role or burned >= amount:
                    continue
                take = min(entry.amount, amount - burned)
                burned += take
                entry.amount -= take
        self.meta.supply -= burned
        self.meta.burned += burned
        (await self.day_row()).slashes += burned
        self.summary.touched.add(node.address)
        return burned

    async def lose_reputation(self, address: str, amount: int) -> int:
        acc = await self.account(address)
        before = acc.reputation
        acc.reputation = max(0, acc.reputation - amount)
        return before - acc.reputation

    async def validator_penalized(self, a: Mapping[str, str]) -> None:
        """Begin-block, at the end of a round's attestation window (`close_attestations`)."""
        sid = int(a["submission_id"])
        sub = await self.s.get(IxSubmission, sid)
        lost = await self.lose_reputation(a["validator"], self.params.validator_penalty_reputation)
        self.s.add(
            IxValidatorPenalty(
                height=self.block.height,
                address=a["validator"],
                submission_id=sid,
                round=sub.round if sub else 0,
                reason=a["reason"],
                reputation_lost=lost,
            )
        )

    # -- stake lifecycle --------------------------------------------------------------

    async def unbond(self, msg: Unbond, release: int) -> None:
        node = await self.s.get(IxNode, (msg.role, msg.creator))
        if node is None:
            raise IndexGap(f"unbond by {msg.creator}, which the index has no {msg.role} for")
        node.stake -= msg.amount
        node.active = node.active and node.stake > 0
        self.s.add(
            IxUnbonding(
                address=msg.creator,
                role=msg.role,
                unbonded=msg.amount,
                amount=msg.amount,
                release_height=release,
                height=self.block.height,
                withdrawn_height=0,
            )
        )
        await self.node_event(node, "unbond")

    async def withdraw(self, address: str, amount: int) -> None:
        due = await self.s.scalars(
            select(IxUnbonding).where(
                IxUnbonding.address == address,
                IxUnbonding.withdrawn_height == 0,
                IxUnbonding.amount > 0,
                IxUnbonding.release_height <= self.block.height,
            )
        )
        paid = 0
        for entry in due:
            entry.withdrawn_height = self.block.height
            paid += entry.amount
        if paid != amount:
            log.error("withdraw by %s: the index pays %d, the ledger %d", address, paid, amount)
        (await self.account(address)).balance += amount

    # -- adapter proposals (checked merges) -------------------------------------------

    async def propose(self, msg: ProposeAdapter, a: Mapping[str, str], tx_hash: str) -> None:
        """`handlers.propose_adapter`: opens a proposal; nothing is approved yet."""
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
        validators = a.get("validators", "")
        self.s.add(
            IxProposal(
                round=msg.round,
                version=msg.version,
                parent_version=msg.parent_version,
                proposer=msg.creator,
                cid=msg.adapter_cid,
                sha256=msg.sha256,
                size=msg.size,
                spec=json.dumps(asdict(spec)),
                submission_ids=json.dumps(list(msg.submission_ids)),
                assigned=json.dumps(validators.split(",") if validators else []),
                height=self.block.height,
                tx_hash=tx_hash.upper(),
                status="pending",
                decided_height=0,
                burned=0,
            )
        )
        await self.s.flush()

    async def proposal(self, round_number: int) -> IxProposal:
        found = (
            await self.s.scalars(
                select(IxProposal)
                .where(IxProposal.round == round_number)
                .order_by(IxProposal.id.desc())
                .limit(1)
            )
        ).first()
        if found is None:
            raise IndexGap(f"no proposal for round {round_number} in the index")
        return found

    async def attest_adapter(self, msg: AttestAdapter) -> None:
        prop = await self.proposal(msg.round)
        seq = await self.s.scalar(
            select(func.count())
            .select_from(IxProposalAttestation)
            .where(IxProposalAttestation.proposal_id == prop.id)
        )
        self.s.add(
            IxProposalAttestation(
                proposal_id=prop.id,
                validator=msg.creator,
                seq=int(seq or 0) + 1,
                verdict=msg.verdict,
                height=self.block.height,
            )
        )
        self.summary.touched.add(msg.creator)
        await self.s.flush()

    async def decide_proposal(self, msg: AttestAdapter, outcome: str) -> None:
        """`handlers.attest_adapter` at quorum: the agreeing validators are paid, then the
        proposal is rejected (proposer slashed), stale, or approved (the new adapter)."""
        p = self.params
        prop = await self.proposal(msg.round)
        votes = await self.s.scalars(
            select(IxProposalAttestation)
            .where(
                IxProposalAttestation.proposal_id == prop.id,
                IxProposalAttestation.verdict == msg.verdict,
            )
            .order_by(IxProposalAttestation.seq)
        )
        for vote in list(votes):
            await self.mint_reward(
                vote.validator,
                p.validator_reward,
                p.reputation_gain_validator,
                kind="validator",
                rnd=msg.round,
            )
        prop.status = outcome
        prop.decided_height = self.block.height
        if outcome == "rejected":
            node = await self.s.get(IxNode, ("proposer", prop.proposer))
            if node is None:
                raise IndexGap(f"proposer {prop.proposer} is not an indexed node")
            prop.burned = await self.burn_stake(node, p.slash_amount)
            await self.penalize(prop.proposer, prop.burned, reason="proposal", sid=0, rnd=msg.round)
            return
        if outcome != "approved":
            return
        doc = json.loads(prop.spec)
        spec = ArtifactSpec(**{**doc, "target_modules": tuple(doc["target_modules"])})
        row = artifact_row(
            spec,
            status="approved",
            by=prop.proposer,
            height=self.block.height,
            approved=self.block.height,
        )
        await self.s.merge(row)
        set_active(self.meta, "adapter", row.key)
        rnd = await self.round_row(msg.round)
        if rnd is not None:
            rnd.proposed_version = prop.version
        await self.mint_reward(
            prop.proposer,
            p.proposer_reward,
            p.reputation_gain_proposer,
            kind="proposer",
            rnd=msg.round,
        )
        ids = json.loads(prop.submission_ids)
        self.s.add(
            IxAdapterVersion(
                version=prop.version,
                parent_version=prop.parent_version,
                round=prop.round,
                cid=prop.cid,
                sha256=prop.sha256,
                size=prop.size,
                proposer=prop.proposer,
                height=self.block.height,
                tx_hash=prop.tx_hash,
                submission_ids=json.dumps(ids),
                heldout_loss=None,
                base_loss=None,
            )
        )
        for sid in ids:
            sub = await self.s.get(IxSubmission, sid)
            if sub is not None:
                sub.merged_version = prop.version
        self.summary.adapter_versions.append(prop.version)

    # -- disputes ---------------------------------------------------------------------

    async def dispute(self, dispute_id: int) -> IxDispute:
        found = await self.s.get(IxDispute, dispute_id)
        if found is None:
            raise IndexGap(f"dispute {dispute_id} is not in the index")
        return found

    async def open_dispute(self, msg: OpenDispute, a: Mapping[str, str], tx_hash: str) -> None:
        sub = await self.s.get(IxSubmission, msg.submission_id)
        if sub is None:
            raise IndexGap(f"dispute on submission {msg.submission_id}, not indexed")
        self.s.add(
            IxDispute(
                submission_id=sub.id,
                round=sub.round,
                miner=sub.miner,
                claimant=a["claimant"],
                respondent=a["respondent"],
                opener=msg.creator,
                steps=msg.steps,
                lo=0,
                hi=msg.steps,
                rounds=0,
                status="bisecting",
                referees="[]",
                lo_cid="",
                votes=0,
                winner="",
                loser="",
                burned=0,
                reason="",
                opened_height=self.block.height,
                resolved_height=0,
                tx_hash=tx_hash.upper(),
            )
        )
        self.summary.touched.update((a["claimant"], a["respondent"]))
        await self.s.flush()

    async def dispute_event(self, kind: str, a: Mapping[str, str]) -> None:
        d = await self.dispute(int(a["dispute_id"]))
        if kind == "dispute_narrowed":
            d.lo, d.hi, d.rounds = int(a["lo"]), int(a["hi"]), d.rounds + 1
        elif kind == "dispute_referee":
            d.status = "refereeing"
            referees = a.get("referees", "")
            d.referees = json.dumps(referees.split(",") if referees else [])
        elif kind == "dispute_checkpoint":
            d.lo_cid = a["cid"]
        elif kind == "dispute_resolved":
            await self.resolve_dispute(d, a)

    async def resolve_dispute(self, d: IxDispute, a: Mapping[str, str]) -> None:
        """`disputes._resolve`: the loser slashed, a validator winner paid, the submission's
        verdict turned over to what the dispute proved."""
        p = self.params
        sub = await self.s.get(IxSubmission, d.submission_id)
        if sub is None:
            raise IndexGap(f"dispute {d.submission_id}'s submission is not indexed")
        winner, loser = a["winner"], a.get("loser", "")
        d.status, d.winner, d.loser = "resolved", winner, loser
        d.rounds = int(a.get("rounds", d.rounds))
        d.reason = a.get("reason", "")[:64]
        d.resolved_height = self.block.height
        if not loser:
            return
        role = "miner" if loser == sub.miner else "validator"
        node = await self.s.get(IxNode, (role, loser))
        d.burned = await self.burn_stake(node, p.slash_amount) if node else 0
        if d.burned != int(a.get("burned", d.burned)):
            log.error(
                "dispute %d: the index burned %d, the ledger %s", d.submission_id, d.burned, a
            )
        await self.penalize(loser, d.burned, reason="dispute", sid=sub.id, rnd=sub.round)
        winner_address = d.claimant if winner == "claimant" else d.respondent
        if winner_address != sub.miner:
            await self.mint_reward(
                winner_address, p.validator_reward, 0, kind="dispute", rnd=sub.round, sid=sub.id
            )
        right = winner == "claimant"
        if right and sub.status == "rejected":
            sub.settled_height = self.block.height
            miner = await self.account(sub.miner)
            miner.rejected -= 1
            rnd = await self.round_row(sub.round)
            if rnd is not None:
                rnd.rejected -= 1
            await self.verify_submission(sub)
        elif not right and sub.status == "verified":
            sub.settled_height = self.block.height
            miner = await self.account(sub.miner)
            miner.verified -= 1
            rnd = await self.round_row(sub.round)
            if rnd is not None:
                rnd.verified -= 1
            await self.reject_submission(sub, reason="overturned")
        else:
            return
        # trust follows the settled verdict: re-judge the submission's attestations
        verdict = SETTLED_VERDICT[sub.status]
        for att in await self.attestations_of(sub.id):
            if att.agreed is None:
                continue
            agreed = att.verdict == verdict
            validator = await self.account(att.validator)
            validator.attest_agreed += int(agreed) - int(att.agreed)
            att.agreed = agreed
        self.summary.settled.append(
            {"submission_id": sub.id, "miner": sub.miner, "status": sub.status}
        )


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
