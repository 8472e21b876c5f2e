"""Playing disputes from a node: open one, answer the bisection, post the checkpoint, referee.

The ledger runs the bisection (`r3mes.chain.disputes`); this is what a miner or validator
does about it each step. A party answers the ledger's query step with its own trace of the
task (`r3mes.work.dispute.own_trace`: per-step state digests, checkpoints after every step),
posts the agreed checkpoint at ``lo`` by CID once the dispute is down to one step, and a
referee re-executes that single step from the posted checkpoint (`referee_step`). A miner
opens one when a submission of its own is rejected; a validator opens one when it accepted
a submission another validator rejected.

`lie` is FAULT INJECTION for tests and demos (a lying validator): its digests leave the
honest ones halfway through the task, as a validator that rejected honest work must claim.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from r3mes.work.profile import NO_ADAPTER, WorkProfile, derive_task

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.client_types import SubmissionInfo
    from r3mes.chain.crypto import SigningKey
    from r3mes.node.artifacts import ArtifactCache, BlobStore
    from r3mes.work.trace import StepTrace

logger = logging.getLogger(__name__)

MAX_CHECKPOINT_BYTES = 64 << 20


@dataclass
class DisputeAgent:
    client: BlockchainClient
    key: SigningKey
    store: BlobStore
    artifacts: ArtifactCache
    profile: WorkProfile
    lie: bool = False
    """FAULT INJECTION: post digests that leave the honest ones halfway through."""
    _traces: dict[int, StepTrace] = field(default_factory=dict)
    _sent: set[tuple[int, str, int]] = field(default_factory=set)
    """(dispute, move, step) already sent: not sent again while the block is pending."""

    @property
    def address(self) -> str:
        return self.key.address

    def inputs(self, sub: SubmissionInfo) -> tuple[Any, Any, Any, Any]:
        """(task, model, start adapter state, shard) of the task `sub` was trained on."""
        from r3mes.work.data import shard_of
        from r3mes.work.versions import start_adapter

        rnd = self.client.round(sub.round)
        task = derive_task(
            round_number=rnd.number,
            seed_hex=rnd.seed,
            miner=sub.miner,
            shard=sub.shard,
            n_shards=rnd.shards_per_round,
            base_model_cid=rnd.base_model_cid,
            dataset_cid=rnd.dataset_cid,
            adapter_cid=rnd.adapter_cid,
            profile=self.profile,
        )
        model = self.artifacts.model(task.base_model_cid)
        loaded = (
            None if task.adapter_cid == NO_ADAPTER else self.artifacts.adapter(task.adapter_cid)[0]
        )
        shard = shard_of(
            self.artifacts.dataset(task.dataset_cid),
            shard_index=task.shard_index,
            n_shards=task.n_shards,
        )
        return task, model, start_adapter(task, loaded, model), shard

    def trace(self, sub: SubmissionInfo) -> StepTrace:
        if sub.id not in self._traces:
            from r3mes.work.dispute import own_trace

            task, model, adapter_state, shard = self.inputs(sub)
            self._traces[sub.id] = own_trace(
                task=task, model=model, adapter_state=adapter_state, shard=shard, every=1
            )
        return self._traces[sub.id]

    def digests(self, sub: SubmissionInfo) -> list[str]:
        honest = list(self.trace(sub).step_digests)
        if not self.lie:
            return honest
        keep = len(honest) // 2 + 1  # FAULT INJECTION: leave the honest chain halfway
        return honest[:keep] + [
            hashlib.sha256(b"lie" + d.encode()).hexdigest() for d in honest[keep:]
        ]

    def open(self, sub: SubmissionInfo) -> None:
        """Open a dispute over `sub` with this node's own digests."""
        from r3mes.chain.msgs import OpenDispute

        if (sub.id, "open", 0) in self._sent:
            return
        digests = self.digests(sub)
        msg = OpenDispute(
            creator=self.address,
            submission_id=sub.id,
            steps=len(digests) - 1,
            start_digest=digests[0],
            final_digest=digests[-1],
        )
        self.client.sign_and_broadcast(self.key, [msg])
        self._sent.add((sub.id, "open", 0))
        logger.info("opened a dispute over submission %d", sub.id)

    def step(self) -> bool:
        """Make every move this node owes in an open dispute; True if it made one."""
        moved = False
        for d in self.client.open_disputes():
            if self.address in (d.get("claimant"), d.get("respondent")):
                moved |= self._play(d)
            elif d.get("status") == "refereeing" and self.address in d.get("referees", []):
                moved |= self._referee(d)
        return moved

    def _play(self, d: dict[str, Any]) -> bool:
        from r3mes.chain.msgs import DisputeCheckpoint

        sid, side = int(d["id"]), "claimant" if d["claimant"] == self.address else "respondent"
        sub = self.client.submission(sid)
        if d["status"] == "bisecting":
            query = int(d["query"])
            final = query == int(d["steps"])
            posted = d[f"{side}_hi"] if final else d[f"{side}_mid"]
            if posted or (sid, "digest", query) in self._sent:
                return False
            digest = self.digests(sub)[query]
            msg = DisputeCheckpoint(creator=self.address, dispute_id=sid, step=query, digest=digest)
            self.client.sign_and_broadcast(self.key, [msg])
            self._sent.add((sid, "digest", query))
            return True
        lo = int(d["lo"])
        if d["lo_cid"] or (sid, "checkpoint", lo) in self._sent:
            return False
        if self.digests(sub)[lo] != d["lo_digest"]:
            return False
        data = self.trace(sub).checkpoints[lo].encode()
        cid = self.store.add_bytes(data, pin=True)
        msg = DisputeCheckpoint(
            creator=self.address, dispute_id=sid, step=lo, digest=d["lo_digest"], cid=cid
        )
        self.client.sign_and_broadcast(self.key, [msg])
        self._sent.add((sid, "checkpoint", lo))
        return True

    def _referee(self, d: dict[str, Any]) -> bool:
        from r3mes.chain.msgs import DisputeVerdict
        from r3mes.work.dispute import referee_step

        sid, lo = int(d["id"]), int(d["lo"])
        voted = any(v[0] == self.address for v in d.get("votes", []))
        if not d["lo_cid"] or voted or (sid, "verdict", lo) in self._sent:
            return False
        task, model, adapter_state, shard = self.inputs(self.client.submission(sid))
        checkpoint = self.store.get_bytes(d["lo_cid"], max_size=MAX_CHECKPOINT_BYTES)
        digest = referee_step(
            task=task,
            model=model,
            adapter_state=adapter_state,
            shard=shard,
            checkpoint=checkpoint,
            step=lo,
        )
        msg = DisputeVerdict(creator=self.address, dispute_id=sid, digest=digest)
        self.client.sign_and_broadcast(self.key, [msg])
        self._sent.add((sid, "verdict", lo))
        logger.info("refereed dispute %d at step %d", sid, lo)
        return True
