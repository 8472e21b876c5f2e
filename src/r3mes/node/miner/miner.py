"""The miner role: take this miner's task each round, train, store, prove, submit.

Every task runs as one atomic mining transaction (`AtomicMiningCoordinator`); the
error-feedback residual advances by the ledger-derived rule of `r3mes.node.miner.settlement`
(verified by the deadline: promoted; rejected, late or expired: dropped), the same rule
validators apply, and the miner waits for that rule to decide before mining again, so its
residual always equals the one validators replay.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from r3mes.node.errors import TransactionError, ValidationError
from r3mes.node.ledger_role import (
    LedgerRole,
    LedgerSettings,
    RoleDeps,
    check_gradient_checkpointing_setting,
)
from r3mes.node.miner.coordinator import AtomicMiningCoordinator, CoordinatorConfig
from r3mes.node.miner.journal import Journal, TxState
from r3mes.node.miner.parts import (
    ChainSubmissions,
    ChainTaskSource,
    ContentUpdateStore,
    TrainerConfig,
    WorkTrainer,
)
from r3mes.node.miner.residual import ResidualStore
from r3mes.node.miner.settlement import Fate, fate_on_chain
from r3mes.node.miner.task_pool import TaskPool
from r3mes.node.runtime.retry import RetryPolicy

if TYPE_CHECKING:
    from fastapi import FastAPI

    from r3mes.chain.client_types import SubmissionInfo

logger = logging.getLogger(__name__)

PAUSE_POINTS = (TxState.IPFS_UPLOAD.value, TxState.BLOCKCHAIN_SUBMIT.value)


@dataclass(frozen=True)
class MinerSettings(LedgerSettings):
    """Everything a miner needs besides its key."""

    ROLE: ClassVar[str] = "miner"

    max_prefetch: int = 2
    """Artifact sets (base model, dataset, adapter) of current and upcoming rounds fetched,
    unpacked and loaded ahead of the work (R3MES_MAX_PREFETCH); 2 covers this round's and
    the next adapter version's, which is all the ledger announces ahead."""
    cheat: str | None = None
    """FAULT INJECTION for tests and demos only ("random" or "copy")."""
    stake: int = 0
    """Credits locked when registering; slashing burns from it."""
    pause_after: str | None = None
    """TEST-ONLY FAULT INJECTION (R3MES_TEST_PAUSE_AFTER): "IPFS_UPLOAD" or
    "BLOCKCHAIN_SUBMIT". Once that step of a mining transaction is done, the miner writes
    `paused-after-<STATE>` in its state folder and waits until stopped, so a test can
    SIGKILL it at exactly that point."""
    upload_retry: RetryPolicy = field(default_factory=RetryPolicy)
    submit_retry: RetryPolicy = field(default_factory=RetryPolicy)
    gradient_checkpointing: str = "auto"
    """Recompute each layer in the backward when training ("auto": for models of a billion
    parameters or more, "on", "off"; R3MES_GRADIENT_CHECKPOINTING). Memory and time only: the
    update bytes are identical either way (`r3mes.work.training`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pause_after not in (None, *PAUSE_POINTS):
            raise ValidationError(
                f"R3MES_TEST_PAUSE_AFTER must be one of {PAUSE_POINTS}, got {self.pause_after!r}"
            )
        check_gradient_checkpointing_setting(self.gradient_checkpointing)


class Miner(LedgerRole):
    """The miner service."""

    settings: MinerSettings

    def __init__(self, settings: MinerSettings, deps: RoleDeps) -> None:
        from prometheus_client import Counter, Gauge

        from r3mes.node.artifacts import ArtifactCache

        super().__init__(settings, deps)
        self.settings = settings
        state = settings.service.state_dir
        self.journal = Journal(state / "journal.sqlite")
        self.residuals = ResidualStore(state / "residual")
        self.trainer = WorkTrainer(
            config=TrainerConfig(
                profile=settings.profile, miner=self.address, cheat=settings.cheat
            ),
            artifacts=ArtifactCache(
                store=self.store,
                root=state / "artifacts",
                source=self.client,
                max_loaded=3 * settings.max_prefetch,  # model, dataset, adapter per set
                gradient_checkpointing=settings.gradient_checkpointing,
            ),
            residuals=self.residuals,
            client=self.client,
        )
        from r3mes.node.dispute_agent import DisputeAgent

        self.disputes = DisputeAgent(
            client=self.client,
            key=self.key,
            store=self.store,
            artifacts=self.trainer.artifacts,
            profile=settings.profile,
        )
        self.tasks = ChainTaskSource(
            client=self.client, miner=self.address, journal=self.journal, ready=self._settled
        )
        self.pool = TaskPool(
            source=self.tasks,
            max_prefetch=settings.max_prefetch,
            prepare=self.trainer.prepare,
        )
        self.coordinator = AtomicMiningCoordinator(
            journal=self.journal,
            trainer=self.trainer,
            store=ContentUpdateStore(self.store),
            ledger=ChainSubmissions(client=self.client, key=self.key),
            pool=self.pool,
            residuals=self.residuals,
            config=CoordinatorConfig(
                upload_retry=settings.upload_retry,
                submit_retry=settings.submit_retry,
                promote_residual_on_commit=False,
            ),
            should_stop=self.stop_event.is_set,
            after_step=self._pause_for_test if settings.pause_after else None,
        )
        self._tx_total = Counter(
            "r3mes_miner_transactions",
            "Mining transactions by final state",
            ["state"],
            registry=self.registry,
        )
        self._train_s = Gauge(
            "r3mes_miner_last_train_seconds",
            "Seconds the last training took",
            registry=self.registry,
        )

    # -- lifecycle --------------------------------------------------------------------

    def on_start(self) -> None:
        from r3mes.node.registration import ensure_registered

        ensure_registered(
            self.client,
            self.key,
            role="miner",
            endpoint=self._endpoint(),
            stake=self.settings.stake,
        )
        resolved = self.coordinator.recover()
        for record in resolved:
            logger.info("recovered %s -> %s", record.tx_id, record.state)
            self._tx_total.labels(state=record.state.value).inc()
        height = self.tasks.join()
        logger.info("ready: mining from the first round that opens at height %d or later", height)

    def on_stop(self) -> None:
        self.pool.close()
        self.journal.close()
        self.client.close()

    def _pause_for_test(self, done: TxState) -> None:
        """TEST-ONLY FAULT INJECTION: hold the transaction right after step `done`."""
        if done.value != self.settings.pause_after:
            return
        marker = self.config.state_dir / f"paused-after-{done.value}"
        marker.write_text(str(os.getpid()))
        logger.warning("TEST FAULT INJECTION: paused after %s until stopped", done.value)
        self.stop_event.wait()

    def _endpoint(self) -> str:
        return f"http://{self.config.host}:{self.port or 0}"

    # -- the loop ---------------------------------------------------------------------

    def step(self) -> bool:
        if self.settings.cheat is None:
            self._challenge()
        if self.journal.unresolved():
            self.coordinator.recover()
        self.pool.refresh()
        task = self.pool.take()
        if task is None:
            return False
        started = time.monotonic()
        try:
            record = self.coordinator.execute(task)
        except TransactionError as exc:
            self.tasks.pace.record_work(time.monotonic() - started)
            logger.warning("%s", exc)
            self._tx_total.labels(state=exc.state).inc()
            self.wait(self.config.idle_interval)  # do not spin on a persistent failure
            return True
        self.tasks.pace.record_work(time.monotonic() - started)
        self._tx_total.labels(state=record.state.value).inc()
        self._train_s.set(self.coordinator.last_metrics.get("train_s", 0.0))
        logger.info(
            "round %d submitted",
            record.round_id,
            extra={"cid": record.cid, "digest": record.digest, "tx": record.chain_tx},
        )
        return True

    def _settled(self) -> bool:
        """Promote or drop staged residuals by the ledger's verdicts; True when none waits."""
        height = self.client.status().height  # read before the submissions (see settlement)
        waiting = False
        for record in self.journal.recent(20):
            if record.state is not TxState.COMMITTED or not self.residuals.has_staged(record.tx_id):
                continue
            sub = self._submission_of(record.round_id)
            fate = fate_on_chain(
                self.client,
                round_number=record.round_id,
                sub=sub,
                settle_rounds=self.settings.profile.settle_rounds,
                chain_height=height,
            )
            if fate is Fate.PROMOTE and sub is not None:
                # only a residual the ledger committed can be a base (see residual.py)
                self.residuals.promote(
                    record.tx_id, submission_id=sub.id if sub.residual_cid else 0
                )
            elif fate is Fate.DROP:
                logger.warning("round %d: residual dropped (not verified in time)", record.round_id)
                self.residuals.discard(record.tx_id)
            else:
                waiting = True
        return not waiting

    def _challenge(self) -> None:
        """Dispute every rejection of this miner's recent work, and make the moves owed in
        open disputes (`r3mes.node.dispute_agent`); a failure waits for the next step."""
        from r3mes.node.errors import classify

        try:
            for record in self.journal.recent(10):
                if record.state is not TxState.COMMITTED:
                    continue
                sub = self._submission_of(record.round_id)
                if sub is not None and sub.status == "rejected":
                    if self.client.dispute(sub.id) is None:
                        self.disputes.open(sub)
            self.disputes.step()
        except Exception as exc:
            logger.warning("dispute step failed: %s", classify(exc))

    def _submission_of(self, round_id: int) -> SubmissionInfo | None:
        for sub in self.client.submissions(round_id):
            if sub.miner == self.address:
                return sub
        return None

    # -- observability ----------------------------------------------------------------

    def role_stats(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "cheat": self.settings.cheat,
            "atomic_coordinator": self.coordinator.stats(),
            "task_pool": self.pool.snapshot(),
        }

    def add_routes(self, app: FastAPI) -> None:
        from fastapi import HTTPException

        @app.get("/transaction/{tx_id}")
        def transaction(tx_id: str) -> dict[str, Any]:
            if len(tx_id) > 128:
                raise HTTPException(status_code=400, detail="transaction id too long")
            record = self.journal.get(tx_id)
            if record is None:
                raise HTTPException(status_code=404, detail=f"no transaction {tx_id}")
            return record.to_dict()

        @app.get("/transactions")
        def transactions(limit: int = 50) -> dict[str, Any]:
            return {"transactions": [r.to_dict() for r in self.journal.recent(limit)]}
