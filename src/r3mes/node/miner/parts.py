"""The miner's collaborators for the atomic coordinator, wired to the real packages.

`ChainTaskSource` turns the ledger's open round into this miner's task, `WorkTrainer`
trains it with `r3mes.work`, `ContentUpdateStore` stores updates in a content store and
`ChainSubmissions` proves work, signs and submits. Each is small and has one job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from r3mes.node.artifacts import ArtifactCache, BlobStore
from r3mes.node.errors import NodeError, RetryableError, ValidationError
from r3mes.node.miner.coordinator import MiningTask, SubmissionRef, TrainedUpdate
from r3mes.node.miner.journal import Journal, TxState
from r3mes.node.miner.pace import RoundPace
from r3mes.node.miner.residual import ResidualStore, encode_residual
from r3mes.node.miner.task_pool import ArtifactSet
from r3mes.work.profile import WorkProfile, derive_task, round_seed
from r3mes.work.versions import random_update, start_adapter

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.client_types import RoundInfo
    from r3mes.chain.crypto import SigningKey
    from r3mes.work.task import Task

logger = logging.getLogger(__name__)

CHEATS = ("random", "copy")


def task_from_details(task: MiningTask, *, miner: str, profile: WorkProfile) -> Task:
    """The `r3mes.work` task a `MiningTask` stands for."""
    d = task.details
    return derive_task(
        round_number=task.round_id,
        seed_hex=str(d["seed"]),
        miner=miner,
        shard=int(d["shard"]),
        n_shards=int(d["n_shards"]),
        base_model_cid=str(d["base_model_cid"]),
        dataset_cid=str(d["dataset_cid"]),
        adapter_cid=str(d["adapter_cid"]),
        profile=profile,
    )


def mining_task(rnd: RoundInfo, *, miner: str, join_height: int = 0) -> MiningTask | None:
    """This miner's task in `rnd`, or None when it may not mine there (closed, claimed, or
    opened before `join_height`, the height at which the miner was ready)."""
    from r3mes.work.data import assign_shard

    claims = {int(c["shard"]): str(c["miner"]) for c in rnd.claims}
    if rnd.status != "open" or miner in claims.values() or rnd.open_height < join_height:
        return None
    if not (rnd.base_model_cid and rnd.dataset_cid):
        return None  # the ledger has no approved model / dataset yet
    shard = assign_shard(
        seed=round_seed(rnd.seed),
        miner=miner,
        n_shards=rnd.shards_per_round,
        claimed=frozenset(claims),
    )
    details: dict[str, Any] = {
        "seed": rnd.seed,
        "shard": shard,
        "n_shards": rnd.shards_per_round,
        "base_model_cid": rnd.base_model_cid,
        "dataset_cid": rnd.dataset_cid,
        "adapter_cid": rnd.adapter_cid,
        "close_height": rnd.close_height,
    }
    return MiningTask(round_id=rnd.number, task_id=f"round-{rnd.number}", details=details)


class ChainTaskSource:
    """Open tasks for one miner: the current round, unless already mined or gated.

    A miner joins at the first round that opens once it is ready (`join`): a round
    already under way when it started may close before its first, cold training is done,
    and the ledger would refuse that submission. For the same reason it leaves a round
    alone once too few blocks are left for a transaction of the usual length (`pace`).
    """

    def __init__(
        self,
        *,
        client: BlockchainClient,
        miner: str,
        journal: Journal,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.client = client
        self.miner = miner
        self.journal = journal
        self._ready = ready
        self.join_height = 0
        """Rounds that opened below this height are not mined (0: any round)."""
        self.pace = RoundPace()
        self.skipped: set[int] = set()
        """Rounds left alone because too little of them was left."""
        self.rounds_too_short = False
        """Whether the last look found a whole round shorter than a mining transaction."""

    def join(self) -> int:
        """Mine from the next round that opens; returns the height joined at."""
        self.join_height = self.client.status().height + 1
        return self.join_height

    def open_tasks(self) -> list[MiningTask]:
        if not self._ready():
            return []
        height = self.client.status().height
        self.pace.observe_height(height)
        rnd = self.client.current_round()
        task = mining_task(rnd, miner=self.miner, join_height=self.join_height)
        if task is None:
            return []
        self._warn_if_rounds_are_too_short(rnd.close_height - rnd.open_height + 1)
        if not self.pace.fits(
            height=height, open_height=rnd.open_height, close_height=rnd.close_height
        ):
            if rnd.number not in self.skipped:
                self.skipped.add(rnd.number)
                logger.info(
                    "round %d: %d blocks left, too few for a %.1f s transaction; "
                    "waiting for the next round",
                    rnd.number,
                    rnd.close_height - height,
                    self.pace.work_s or 0.0,
                )
            return []
        mined = any(r.state is TxState.COMMITTED for r in self.journal.for_round(task.round_id))
        return [] if mined else [task]

    def _warn_if_rounds_are_too_short(self, round_blocks: int) -> None:
        """Say once (again after it recovered) that rounds are shorter than a transaction."""
        shortfall = self.pace.shortfall(round_blocks=round_blocks)
        if shortfall is not None and not self.rounds_too_short:
            logger.warning("%s", shortfall)
        self.rounds_too_short = shortfall is not None

    def upcoming(self) -> list[ArtifactSet]:
        """The current round's artifacts, then the next round's: the same base model and
        dataset with the newest approved adapter (a round trains on the adapter active
        when it opens, so a version approved now is what the next round uses)."""
        rnd = self.client.current_round()
        if not (rnd.base_model_cid and rnd.dataset_cid):
            return []
        current = ArtifactSet(rnd.base_model_cid, rnd.dataset_cid, rnd.adapter_cid)
        adapters = self.client.approved_artifacts("adapter")
        if not adapters:
            return [current]
        newest = max(adapters, key=lambda a: a.version)
        return [current, ArtifactSet(rnd.base_model_cid, rnd.dataset_cid, newest.cid)]


class ContentUpdateStore:
    """`UpdateStore` over a content store (local blockstore or Kubo).

    Whether an update was pinned before it was stored is asked here and recorded in the
    journal by the coordinator, so a rollback, even after a restart, never drops a pin
    that someone else (the same bytes from another transaction) holds.
    """

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def cid_for(self, data: bytes) -> str:
        from r3mes.storage.unixfs import compute_cid

        return compute_cid(data, cid_version=1)

    def is_pinned(self, cid: str) -> bool:
        local = getattr(self.store, "local", self.store)  # a TieredStore pins locally first
        check = getattr(local, "is_pinned", None)
        return bool(check(cid)) if callable(check) else False

    def put(self, data: bytes) -> str:
        return self.store.add_bytes(data, pin=True)

    def unpin(self, cid: str) -> None:
        from r3mes.storage.blockstore import NotPinned

        try:
            self.store.unpin(cid)
        except NotPinned:
            logger.debug("%s was not pinned", cid)


class ChainSubmissions:
    """`SubmissionLedger` for one miner key."""

    def __init__(self, *, client: BlockchainClient, key: SigningKey) -> None:
        self.client = client
        self.key = key

    def find_submission(self, *, round_id: int) -> SubmissionRef | None:
        for sub in self.client.submissions(round_id):
            if sub.miner == self.key.address:
                return SubmissionRef(cid=sub.cid, digest=sub.digest, chain_tx=str(sub.id))
        return None

    def submit(
        self,
        *,
        task: MiningTask,
        cid: str,
        digest: str,
        residual_cid: str = "",
        residual_digest: str = "",
        base_submission_id: int = 0,
        trace_cid: str = "",
        trace_root: str = "",
    ) -> str:
        result = self.client.submit_gradient(
            self.key,
            round_number=task.round_id,
            shard=int(task.details["shard"]),
            cid=cid,
            digest=digest,
            residual_cid=residual_cid,
            residual_digest=residual_digest,
            base_submission_id=base_submission_id,
            trace_cid=trace_cid,
            trace_root=trace_root,
        )
        return result.hash


@dataclass(frozen=True)
class TrainerConfig:
    """What the miner trains and how."""

    profile: WorkProfile
    """The network's shared training knobs."""
    miner: str
    """This miner's address (enters every task)."""
    cheat: str | None = None
    """FAULT INJECTION for tests and demos: "random" or "copy"; None for honest work."""

    def __post_init__(self) -> None:
        if self.cheat is not None and self.cheat not in CHEATS:
            raise ValidationError(f"--cheat must be one of {CHEATS}, got {self.cheat!r}")


class WorkTrainer:
    """`UpdateTrainer`: fetch the task's artifacts and train (or cheat, if told to)."""

    def __init__(
        self,
        *,
        config: TrainerConfig,
        artifacts: ArtifactCache,
        residuals: ResidualStore,
        client: BlockchainClient,
    ) -> None:
        self.config = config
        self.artifacts = artifacts
        self.residuals = residuals
        self.client = client

    def prepare(self, artifacts: ArtifactSet) -> None:
        """Prefetch: fetch, unpack and load a set's model, dataset and adapter."""
        from r3mes.work.profile import NO_ADAPTER

        self.artifacts.model(artifacts.base_model_cid)
        self.artifacts.dataset(artifacts.dataset_cid)
        if artifacts.adapter_cid not in ("", NO_ADAPTER):
            self.artifacts.adapter(artifacts.adapter_cid)

    def _adapter(self, work: Task) -> Any:
        from r3mes.work.profile import NO_ADAPTER

        if work.adapter_cid == NO_ADAPTER:
            return None
        state, _ = self.artifacts.adapter(work.adapter_cid)
        return state

    def train(self, task: MiningTask) -> TrainedUpdate:
        from r3mes.work.data import shard_of
        from r3mes.work.executor import model_device
        from r3mes.work.submission import build_submission
        from r3mes.work.trace import StepTrace, build_traced_submission, encode_trace

        work = task_from_details(task, miner=self.config.miner, profile=self.config.profile)
        if self.config.cheat == "copy":
            return self._copy(task)
        model = self.artifacts.model(work.base_model_cid)
        adapter = start_adapter(work, self._adapter(work), model)
        if self.config.cheat == "random":
            sub = random_update(task=work, adapter_state=adapter, seed=work.derived_seed("cheat"))
            metrics = {"train_s": 0.0, "cheat": 1.0}
            return TrainedUpdate(payload=sub.encoded, digest=sub.digest, metrics=metrics)
        dataset = self.artifacts.dataset(work.dataset_cid)
        shard = shard_of(dataset, shard_index=work.shard_index, n_shards=work.n_shards)
        residual, base = self.residuals.load_base()
        started = time.perf_counter()
        trace: StepTrace | None = None
        if model_device(model).type == "cpu":  # deterministic: publish the step trace
            sub, trace = build_traced_submission(
                task=work,
                model=model,
                adapter_state=adapter,
                shard=shard,
                residual=residual or None,
            )
        else:  # another executor class: validators re-execute in full, no trace to check
            sub = build_submission(
                task=work,
                model=model,
                adapter_state=adapter,
                shard=shard,
                residual=residual or None,
            )
        train_s = round(time.perf_counter() - started, 4)
        return TrainedUpdate(
            payload=sub.encoded,
            digest=sub.digest,
            residual=sub.next_residual,
            residual_payload=encode_residual(sub.next_residual),
            base_submission_id=base,
            trace_payload=None if trace is None else encode_trace(trace),
            trace_root="" if trace is None else trace.root,
            metrics={"train_s": train_s},
        )

    def _copy(self, task: MiningTask) -> TrainedUpdate:
        """FAULT INJECTION: resubmit another miner's update of this round as our own."""
        others = [s for s in self.client.submissions(task.round_id) if s.miner != self.config.miner]
        if not others:
            raise RetryableError(f"round {task.round_id}: no other submission to copy yet")
        victim = others[0]
        try:
            data = self.artifacts.store.get_bytes(victim.cid, max_size=64 << 20)
        except Exception as exc:
            raise NodeError(f"could not fetch {victim.cid} to copy: {exc}") from exc
        return TrainedUpdate(payload=data, digest=victim.digest, metrics={"cheat": 2.0})
