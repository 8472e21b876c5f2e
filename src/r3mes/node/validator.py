"""The validator role: re-execute every pending submission and attest to the verdict.

For each submission still pending on the ledger (oldest first, never one of its own), the
validator fetches the update by CID, checks its digest, rebuilds the miner's task from the
round, re-executes it with `r3mes.work.verify` and sends a signed `Attest`. It replays each
miner's error-feedback residual: the residual a verified update leaves behind is staged
per miner and becomes current once the ledger settles the submission as verified.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r3mes.node.errors import NetworkError, ValidationError
from r3mes.node.residual import ResidualStore
from r3mes.node.service import RoleService, ServiceConfig
from r3mes.node.tasks import WorkProfile, derive_task

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.client_types import SubmissionInfo
    from r3mes.chain.crypto import SigningKey
    from r3mes.node.artifacts import BlobStore
    from r3mes.work.verify import Verdict

logger = logging.getLogger(__name__)

MAX_UPDATE_BYTES = 64 << 20
LOOKBACK_ROUNDS = 3


@dataclass(frozen=True)
class ValidatorSettings:
    """Everything a validator needs besides its key."""

    service: ServiceConfig
    chain_url: str
    profile: WorkProfile
    blocks: Path
    """Root of the local blockstore holding artifacts and updates."""

    def __post_init__(self) -> None:
        if self.service.role != "validator":
            raise ValidationError("ValidatorSettings.service.role must be 'validator'")


class VerdictLog:
    """Verdicts this validator reached (SQLite), so a restart never re-attests."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS verdicts (sid INTEGER PRIMARY KEY, miner TEXT NOT NULL,"
            " round INTEGER NOT NULL, accepted INTEGER NOT NULL, reason TEXT NOT NULL,"
            " distance REAL NOT NULL, sent INTEGER NOT NULL DEFAULT 0)"
        )

    def record(self, sub: SubmissionInfo, verdict: Verdict) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?,0)",
                (
                    sub.id,
                    sub.miner,
                    sub.round,
                    int(verdict.accepted),
                    verdict.reason[:500],
                    min(verdict.distance, 1e18),
                ),
            )

    def mark_sent(self, sid: int) -> None:
        with self._lock:
            self._db.execute("UPDATE verdicts SET sent = 1 WHERE sid = ?", (sid,))

    def get(self, sid: int) -> tuple[bool, bool] | None:
        """(accepted, sent) for submission `sid`, if judged."""
        with self._lock:
            row = self._db.execute(
                "SELECT accepted, sent FROM verdicts WHERE sid = ?", (sid,)
            ).fetchone()
        return None if row is None else (bool(row[0]), bool(row[1]))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT accepted, COUNT(*) FROM verdicts GROUP BY accepted"
            ).fetchall()
        out = {"accepted": 0, "rejected": 0}
        for accepted, n in rows:
            out["accepted" if accepted else "rejected"] = int(n)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Validator(RoleService):
    """The validator service."""

    def __init__(
        self,
        settings: ValidatorSettings,
        *,
        key: SigningKey,
        client: BlockchainClient | None = None,
        store: BlobStore | None = None,
    ) -> None:
        from prometheus_client import Counter

        from r3mes.chain.client import BlockchainClient
        from r3mes.node.artifacts import ArtifactCache
        from r3mes.storage.blockstore import Blockstore

        super().__init__(settings.service)
        self.settings = settings
        self.key = key
        self.address = key.address
        self.client = client or BlockchainClient(settings.chain_url)
        self.store: BlobStore = store or Blockstore(settings.blocks)
        state = settings.service.state_dir
        self.artifacts = ArtifactCache(store=self.store, root=state / "artifacts")
        self.verdicts = VerdictLog(state / "verdicts.sqlite")
        self._residual_root = state / "residuals"
        self._attested = Counter(
            "r3mes_validator_attestations",
            "Attestations sent",
            ["verdict"],
            registry=self.registry,
        )

    def residuals_of(self, miner: str) -> ResidualStore:
        if not miner.isalnum():
            raise ValidationError(f"unexpected miner address {miner!r}")
        return ResidualStore(self._residual_root / miner)

    def on_start(self) -> None:
        from r3mes.node.registration import ensure_registered

        ensure_registered(
            self.client, self.key, role="validator", endpoint=f"http://127.0.0.1:{self.port}"
        )

    def on_stop(self) -> None:
        self.verdicts.close()
        self.client.close()

    def step(self) -> bool:
        current = self.client.current_round().number
        pending: list[SubmissionInfo] = []
        for number in range(max(1, current - LOOKBACK_ROUNDS), current + 1):
            for sub in self.client.submissions(number):
                self._settle(sub)
                if sub.status == "pending" and self._needs_verdict(sub):
                    pending.append(sub)
        for sub in sorted(pending, key=lambda s: s.id):
            if self.stop_event.is_set():
                break
            self._judge(sub)
        return bool(pending)

    def _needs_verdict(self, sub: SubmissionInfo) -> bool:
        if sub.miner == self.address:
            return False  # never attest one's own work
        if any(a.get("validator") == self.address for a in sub.attestations):
            return False
        seen = self.verdicts.get(sub.id)
        return seen is None or not seen[1]

    def _settle(self, sub: SubmissionInfo) -> None:
        """Move a miner's replayed residual forward once its submission is verified."""
        if sub.status == "pending" or not sub.miner.isalnum():
            return
        residuals = self.residuals_of(sub.miner)
        tag = f"s{sub.id}"
        if not residuals.has_staged(tag):
            return
        if sub.status == "verified":
            residuals.promote(tag)
        else:
            residuals.discard(tag)

    def _judge(self, sub: SubmissionInfo) -> None:
        seen = self.verdicts.get(sub.id)
        if seen is None:
            verdict = self._verify(sub)
            self.verdicts.record(sub, verdict)
            if verdict.accepted and verdict.next_residual is not None:
                self.residuals_of(sub.miner).stage(f"s{sub.id}", verdict.next_residual)
            accepted, distance = verdict.accepted, verdict.distance
            logger.info(
                "submission %d of %s: %s (%s)",
                sub.id,
                sub.miner,
                "accept" if accepted else "reject",
                verdict.reason,
            )
        else:
            accepted, distance = seen[0], 0.0
        self._attest(sub.id, accepted=accepted, distance=distance)
        self.verdicts.mark_sent(sub.id)
        refreshed = self.client.submissions(sub.round)
        for item in refreshed:
            if item.id == sub.id:
                self._settle(item)

    def _verify(self, sub: SubmissionInfo) -> Verdict:
        from r3mes.node.tasks import NO_ADAPTER
        from r3mes.node.workload import check_update, start_adapter
        from r3mes.work.data import shard_of
        from r3mes.work.verify import Verdict

        rnd = self.client.round(sub.round)
        try:
            data = self.store.get_bytes(sub.cid, max_size=MAX_UPDATE_BYTES)
        except Exception as exc:  # the storage layer's own errors, size limits
            raise NetworkError(f"cannot fetch update {sub.cid}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != sub.digest:
            return Verdict(
                False, "stored bytes do not match the submitted digest", float("inf"), False
            )
        try:
            task = derive_task(
                round_number=rnd.number,
                seed_hex=rnd.seed,
                miner=sub.miner,
                shard=sub.shard,
                n_shards=rnd.shards_per_round,
                base_model_cid=rnd.base_model_cid,
                dataset_cid=rnd.dataset_cid,
                adapter_cid=rnd.adapter_cid,
                profile=self.settings.profile,
            )
        except ValidationError as exc:
            return Verdict(False, f"no valid task for this submission: {exc}", float("inf"), False)
        model = self.artifacts.model(task.base_model_cid)
        loaded = (
            None if task.adapter_cid == NO_ADAPTER else self.artifacts.adapter(task.adapter_cid)[0]
        )
        shard = shard_of(
            self.artifacts.dataset(task.dataset_cid),
            shard_index=task.shard_index,
            n_shards=task.n_shards,
        )
        return check_update(
            task=task,
            submitted=data,
            model=model,
            adapter_state=start_adapter(task, loaded, model),
            shard=shard,
            residual=self.residuals_of(sub.miner).load() or None,
        )

    def _attest(self, sid: int, *, accepted: bool, distance: float) -> None:
        from r3mes.chain.msgs import Attest

        verdict = "accept" if accepted else "reject"
        ppm = int(min(distance, 1e6) * 1_000_000) if distance == distance else 10**12
        msg = Attest(
            creator=self.address,
            submission_id=sid,
            verdict=verdict,
            distance_ppm=min(ppm, 10**12),
        )
        self.client.sign_and_broadcast(self.key, [msg])
        self._attested.labels(verdict=verdict).inc()

    def role_stats(self) -> dict[str, Any]:
        return {"address": self.address, "verdicts": self.verdicts.counts()}
