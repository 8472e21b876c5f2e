"""The atomic mining coordinator: train, store, submit — all of it or none of it.

A mining transaction walks PENDING -> TRAINING -> IPFS_UPLOAD -> BLOCKCHAIN_SUBMIT ->
TASK_COMPLETE -> COMMITTED. Each state is written to the journal *before* its step runs,
so a crash leaves a precise trace:

- failed while PENDING/TRAINING: nothing was stored; the task is released -> FAILED;
- failed after the upload started: the update is unpinned, the staged error-feedback
  residual discarded and the task released -> ROLLED_BACK;
- TASK_COMPLETE is not critical: a failure to mark the task done is logged and the
  transaction still commits (the chain already holds the submission).

Only retryable errors (network, 5xx, timeouts) are retried, with exponential backoff.
Before every submission attempt the chain is asked whether this miner's submission for
the round is already there, so a timed-out-but-landed submission is never sent twice.
`recover()` resolves transactions a killed process left behind.

Collaborators are small protocols (`UpdateTrainer`, `UpdateStore`, `SubmissionLedger`,
`TaskPool`); the miner wires real ones, unit tests wire fakes.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from r3mes.node.errors import NodeError, RetryableError, TransactionError, classify
from r3mes.node.miner.journal import Journal, TxRecord, TxState
from r3mes.node.miner.residual import ResidualStore
from r3mes.node.runtime.retry import RetryPolicy, call_with_retry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiningTask:
    """One unit of work handed out by the chain for a round."""

    round_id: int
    """The training round this task belongs to."""
    task_id: str
    """Stable identifier of the task (e.g. round and shard)."""
    details: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable task description (seed, shard, artifact CIDs ...)."""

    def __post_init__(self) -> None:
        if self.round_id < 0:
            raise ValueError("round_id must be >= 0")
        if not self.task_id or len(self.task_id) > 200:
            raise ValueError("task_id must be 1..200 characters")


@dataclass(frozen=True)
class TrainedUpdate:
    """What training produced: the canonical update bytes and what goes with them."""

    payload: bytes
    """Canonical encoding of the compressed update (what is stored and digested)."""
    digest: str
    """Digest of `payload` as the protocol defines it."""
    residual: dict[str, torch.Tensor] | None = None
    """Error-feedback residual to carry to the next round if this one commits."""
    residual_payload: bytes | None = None
    """`residual`'s canonical bytes, committed on the ledger by CID and digest."""
    base_submission_id: int = 0
    """The ledger submission whose committed residual training started from (0: zeros)."""
    trace_payload: bytes | None = None
    """The step trace's canonical bytes (`r3mes.work.trace`), stored and committed by CID
    with `trace_root` so validators can spot-check the work; None: no trace (full checks)."""
    trace_root: str = ""
    """Merkle root of the trace's step digests (set with `trace_payload`)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Training figures (loss, steps, seconds) for stats and logs."""


@dataclass(frozen=True)
class SubmissionRef:
    """A submission the chain already holds for this miner and round."""

    cid: str
    digest: str
    chain_tx: str | None = None


class UpdateTrainer(Protocol):
    def train(self, task: MiningTask) -> TrainedUpdate: ...


class UpdateStore(Protocol):
    def cid_for(self, data: bytes) -> str:
        """The content id `put(data)` will return, computed without storing."""
        ...

    def is_pinned(self, cid: str) -> bool:
        """Whether `cid` is pinned already (then a rollback must not unpin it)."""
        ...

    def put(self, data: bytes) -> str:
        """Store and pin `data`; return its content id."""
        ...

    def unpin(self, cid: str) -> None:
        """Release `cid` (idempotent: unknown ids are fine)."""
        ...


class SubmissionLedger(Protocol):
    def find_submission(self, *, round_id: int) -> SubmissionRef | None:
        """This miner's submission for `round_id`, if the chain holds one."""
        ...

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
        """Solve the proof of work, sign and broadcast (with the residual and trace
        commitments, when there are); return the chain tx hash."""
        ...


class TaskPool(Protocol):
    def complete(self, task: MiningTask) -> None: ...

    def release(self, task: MiningTask) -> None: ...


@dataclass(frozen=True)
class CoordinatorConfig:
    """Retry behaviour of the coordinator's network steps."""

    upload_retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Backoff for storing the update."""
    submit_retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Backoff for the chain submission (and the look-up before it)."""
    promote_residual_on_commit: bool = True
    """Make the staged residual current at commit. A miner whose residual may only advance
    once validators accept the update sets this False and promotes it itself."""


class AtomicMiningCoordinator:
    """Runs mining transactions with journaled states and rollback."""

    def __init__(
        self,
        *,
        journal: Journal,
        trainer: UpdateTrainer,
        store: UpdateStore,
        ledger: SubmissionLedger,
        pool: TaskPool,
        residuals: ResidualStore,
        config: CoordinatorConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
        should_stop: Callable[[], bool] = lambda: False,
        after_step: Callable[[TxState], None] | None = None,
    ) -> None:
        self.journal = journal
        self.trainer = trainer
        self.store = store
        self.ledger = ledger
        self.pool = pool
        self.residuals = residuals
        self.config = config or CoordinatorConfig()
        self._sleep = sleep
        self._should_stop = should_stop
        self._after_step = after_step
        """TEST-ONLY FAULT INJECTION: called once the upload (IPFS_UPLOAD) and the chain
        broadcast (BLOCKCHAIN_SUBMIT) are done, before the next state is journaled, so a
        test can kill the process at exactly that point."""
        self.last_metrics: dict[str, float] = {}

    # -- the happy path ---------------------------------------------------------------

    def execute(self, task: MiningTask) -> TxRecord:
        """Run one mining transaction for `task`; returns the COMMITTED record.

        Raises `TransactionError` (carrying the tx id and final state) after the
        transaction has been failed or rolled back.
        """
        tx_id = f"r{task.round_id}-{uuid.uuid4().hex[:16]}"
        self.journal.begin(
            tx_id=tx_id,
            round_id=task.round_id,
            task={"task_id": task.task_id, "details": task.details},
        )
        logger.info("tx %s: begin for task %s", tx_id, task.task_id)
        try:
            self.journal.advance(tx_id, TxState.TRAINING)
            update = self.trainer.train(task)
            self.last_metrics = dict(update.metrics)
            if update.residual is not None:
                self.residuals.stage(tx_id, update.residual)
            cid = self.store.cid_for(update.payload)
            self.journal.advance(
                tx_id,
                TxState.IPFS_UPLOAD,
                cid=cid,
                digest=update.digest,
                cid_preexisting=int(self.store.is_pinned(cid)),
            )
            stored = self._retry(lambda: self.store.put(update.payload), "upload", upload=True)
            if stored != cid:
                raise NodeError(f"storage returned CID {stored}, expected {cid}")
            self._checkpoint(TxState.IPFS_UPLOAD)
            self.journal.advance(tx_id, TxState.BLOCKCHAIN_SUBMIT)
            commitment = self._store_residual(update) | self._store_trace(update)
            chain_tx = self._retry(
                lambda: self._submit_once(task, cid=cid, digest=update.digest, **commitment),
                "submit",
            )
            self._checkpoint(TxState.BLOCKCHAIN_SUBMIT)
            return self._finish(tx_id, task, chain_tx=chain_tx)
        except BaseException as exc:
            error = classify(exc) if isinstance(exc, Exception) else NodeError(repr(exc))
            final = self._undo(tx_id, task, error)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt / SystemExit: undone, now let it through
            if final.state is TxState.COMMITTED:
                return final
            raise TransactionError(
                f"mining transaction {tx_id} for round {task.round_id} ended {final.state}: "
                f"{error}",
                tx_id=tx_id,
                state=final.state.value,
            ) from exc

    def _checkpoint(self, done: TxState) -> None:
        if self._after_step is not None:
            self._after_step(done)

    def _store_residual(self, update: TrainedUpdate) -> dict[str, Any]:
        """Store the residual's bytes and return the commitment the submission carries
        (nothing when training produced no residual, e.g. a fault-injected update)."""
        if update.residual_payload is None:
            return {}
        payload = update.residual_payload
        stored = self._retry(lambda: self.store.put(payload), "residual upload", upload=True)
        return {
            "residual_cid": stored,
            "residual_digest": hashlib.sha256(payload).hexdigest(),
            "base_submission_id": update.base_submission_id,
        }

    def _store_trace(self, update: TrainedUpdate) -> dict[str, Any]:
        """Store the step trace and return its commitment (nothing without a trace)."""
        if update.trace_payload is None or not update.trace_root:
            return {}
        payload = update.trace_payload
        stored = self._retry(lambda: self.store.put(payload), "trace upload", upload=True)
        return {"trace_cid": stored, "trace_root": update.trace_root}

    def _submit_once(self, task: MiningTask, *, cid: str, digest: str, **commitment: Any) -> str:
        existing = self.ledger.find_submission(round_id=task.round_id)
        if existing is not None:
            if existing.cid == cid and existing.digest == digest:
                logger.info("round %d: submission already on chain, not resending", task.round_id)
                return existing.chain_tx or "already-on-chain"
            raise NodeError(
                f"round {task.round_id} already holds another submission of this miner "
                f"({existing.cid}); refusing to submit twice"
            )
        return self.ledger.submit(task=task, cid=cid, digest=digest, **commitment)

    def _finish(self, tx_id: str, task: MiningTask, *, chain_tx: str) -> TxRecord:
        self.journal.advance(tx_id, TxState.TASK_COMPLETE, chain_tx=chain_tx)
        try:
            self.pool.complete(task)
        except Exception as exc:  # not critical: the chain holds the submission
            logger.warning("tx %s: could not mark task complete: %s", tx_id, exc)
        self._promote_quietly(tx_id)
        record = self.journal.advance(tx_id, TxState.COMMITTED)
        logger.info("tx %s: committed (chain tx %s)", tx_id, chain_tx)
        return record

    def _promote_quietly(self, tx_id: str) -> None:
        if not self.config.promote_residual_on_commit:
            return
        try:
            self.residuals.promote(tx_id)
        except OSError as exc:  # the submission stands; only error feedback is lost
            logger.error("tx %s: could not promote the residual: %s", tx_id, exc)

    def _retry(self, fn: Callable[[], str], what: str, *, upload: bool = False) -> str:
        policy = self.config.upload_retry if upload else self.config.submit_retry
        return call_with_retry(
            fn, policy=policy, what=what, sleep=self._sleep, should_stop=self._should_stop
        )

    # -- undo -------------------------------------------------------------------------

    def _undo(self, tx_id: str, task: MiningTask, error: NodeError) -> TxRecord:
        record = self.journal.get(tx_id)
        assert record is not None
        if record.state.terminal:
            return record
        if record.state is TxState.TASK_COMPLETE:  # the chain holds it: finish, never undo
            return self._finish_recovered(record, task)
        stored = record.state in (
            TxState.IPFS_UPLOAD,
            TxState.BLOCKCHAIN_SUBMIT,
            TxState.TASK_COMPLETE,
        )
        if record.cid is not None and record.cid_preexisting:
            logger.info("tx %s: %s was pinned before this transaction; kept", tx_id, record.cid)
        elif record.cid is not None:
            self._unpin_quietly(tx_id, record.cid)
        self.residuals.discard(tx_id)
        try:
            self.pool.release(task)
        except Exception as exc:
            logger.warning("tx %s: could not release task: %s", tx_id, exc)
        final = TxState.ROLLED_BACK if stored else TxState.FAILED
        logger.warning("tx %s: %s in %s: %s", tx_id, final, record.state, error)
        return self.journal.advance(
            tx_id, final, error=str(error)[:2000], error_kind=type(error).__name__
        )

    def _unpin_quietly(self, tx_id: str, cid: str) -> None:
        try:
            self.store.unpin(cid)
        except Exception as exc:
            logger.error("tx %s: could not unpin %s: %s", tx_id, cid, exc)

    # -- restart ----------------------------------------------------------------------

    def recover(self) -> list[TxRecord]:
        """Resolve every transaction a previous process left unfinished.

        A transaction caught in BLOCKCHAIN_SUBMIT is committed when the chain holds its
        submission and rolled back otherwise; one whose chain look-up fails with a
        retryable error stays unresolved for the next call. Returns resolved records.
        """
        resolved = []
        for record in self.journal.unresolved():
            task = MiningTask(
                round_id=record.round_id,
                task_id=str(record.task.get("task_id", record.tx_id)),
                details=dict(record.task.get("details", {})),
            )
            try:
                resolved.append(self._resolve(record, task))
            except RetryableError as exc:
                logger.warning("tx %s: cannot resolve yet: %s", record.tx_id, exc)
        return resolved

    def _resolve(self, record: TxRecord, task: MiningTask) -> TxRecord:
        if record.state is TxState.TASK_COMPLETE:
            return self._finish_recovered(record, task)
        if record.state is TxState.BLOCKCHAIN_SUBMIT:
            try:
                existing = self.ledger.find_submission(round_id=record.round_id)
            except Exception as exc:
                raise classify(exc) from exc
            if existing is not None and existing.cid == record.cid:
                self.journal.advance(
                    record.tx_id, TxState.TASK_COMPLETE, chain_tx=existing.chain_tx
                )
                return self._finish_recovered(record, task)
        interrupted = NodeError(f"interrupted in {record.state} by a restart")
        return self._undo(record.tx_id, task, interrupted)

    def _finish_recovered(self, record: TxRecord, task: MiningTask) -> TxRecord:
        try:
            self.pool.complete(task)
        except Exception as exc:
            logger.warning("tx %s: could not mark task complete: %s", record.tx_id, exc)
        self._promote_quietly(record.tx_id)
        logger.info("tx %s: recovered and committed", record.tx_id)
        return self.journal.advance(record.tx_id, TxState.COMMITTED)

    # -- observability ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Success rate, rollbacks, failures, latency and per-state counts."""
        counts = self.journal.counts()
        committed = counts[TxState.COMMITTED.value]
        rolled_back = counts[TxState.ROLLED_BACK.value]
        failed = counts[TxState.FAILED.value]
        finished = committed + rolled_back + failed
        return {
            "transactions": sum(counts.values()),
            "committed": committed,
            "rollbacks": rolled_back,
            "failed": failed,
            "in_flight": sum(counts.values()) - finished,
            "success_rate": (committed / finished) if finished else None,
            "mean_latency_s": self.journal.mean_latency(),
            "states": counts,
            "last_training": self.last_metrics,
        }
