"""The validator role: re-execute every pending submission and attest to the verdict.

For each submission still pending on the ledger (oldest first, never one of its own), the
validator fetches the update by CID, checks its digest, rebuilds the miner's task from the
round, re-executes it with `r3mes.work.verify` and sends a signed `Attest`. It judges only
the submissions the ledger assigned to it (k-of-n quorum), and also those already settled
while their attestation window is open (an assigned validator that never attests loses
reputation). It replays the miner's error-feedback residual from the ledger: the submission
names the verified submission whose committed residual it started from, fetched by CID and
checked against its digest, so a validator that judged none of the miner's earlier work
replays exactly what the miner used; the residual the update leaves behind must match the
one the submission commits (exactly in the same executor class, within the cross-class
tolerance otherwise).

Traced submissions (a miner that published its step trace, `trace_cid` / `trace_root`) are
spot-checked instead (`r3mes.node.spot_check`): a share of their steps, at the genesis
`spot_check_ppm` or this validator's `spot_ppm`, drawn from the next round's seed, so they
are judged once that round is open; any mismatch escalates to full re-execution.

Each submission is handled on its own: one that fails (its update cannot be fetched, the
ledger hiccups) backs off alone while the others proceed, and an update that still cannot
be fetched after `fetch_retry` is rejected with that reason, so it never stays pending.
An update that can never be read (an invalid CID, over the size limit, a malformed or
crafted DAG, bytes that miss the digest) is rejected at once: a CID's content never changes.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from r3mes.node.errors import NetworkError, ValidationError, classify
from r3mes.node.ledger_role import (
    LedgerRole,
    LedgerSettings,
    RoleDeps,
    check_gradient_checkpointing_setting,
)
from r3mes.node.miner.residual import encode_residual, fetch_residual, residual_digest
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.node.spot_check import PPM, TraceRef, fetch_trace, judge, ready, spot_rate
from r3mes.work.profile import derive_task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from r3mes.chain.client_types import SubmissionInfo
    from r3mes.node.artifacts import BlobStore
    from r3mes.work.data import Shard
    from r3mes.work.task import Task
    from r3mes.work.verify import Verdict

logger = logging.getLogger(__name__)

MAX_UPDATE_BYTES = 64 << 20
LOOKBACK_ROUNDS = 3


@dataclass(frozen=True)
class ValidatorSettings(LedgerSettings):
    """Everything a validator needs besides its key."""

    ROLE: ClassVar[str] = "validator"

    """Root of the local blockstore holding artifacts and updates."""
    device: str = "cpu"
    """Where submissions are re-executed ("cpu", "cuda", "cuda:1"); the executor class the
    validator judges in follows from it (`r3mes.work.executor.current_executor_class`)."""
    fetch_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_retries=3, initial_delay=1.0, max_delay=30.0)
    )
    """Backoff between attempts at one submission; an update still unfetchable after
    `max_retries` retries is rejected. Other failures keep backing off (capped)."""
    spot_ppm: int | None = None
    """Share of a traced submission's steps to re-execute (ppm, `r3mes.node.spot_check`);
    None: the ledger's genesis `spot_check_ppm`; 1_000_000: always re-execute in full."""
    stake: int = 0
    """Credits locked when registering: what a lost dispute can take."""
    lie: bool = False
    """TEST/DEMO FAULT INJECTION: attest the opposite of every verdict this validator
    reaches (submissions and adapter proposals), to show a quorum outvoting a liar."""
    gradient_checkpointing: str = "auto"
    """Recompute each layer in the backward when re-executing training ("auto": for models of
    a billion parameters or more, "on", "off"; R3MES_GRADIENT_CHECKPOINTING). Memory and time
    only: the re-executed update bytes are identical either way (`r3mes.work.training`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.device or not all(c.isalnum() or c == ":" for c in self.device):
            raise ValidationError(f"device must look like 'cpu' or 'cuda:0', got {self.device!r}")
        if self.spot_ppm is not None:
            spot_rate(genesis_ppm=None, override=self.spot_ppm)  # raises on a bad rate
        check_gradient_checkpointing_setting(self.gradient_checkpointing)


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

    def reason(self, sid: int) -> str | None:
        """Why submission `sid` was accepted or rejected, if judged."""
        with self._lock:
            row = self._db.execute("SELECT reason FROM verdicts WHERE sid = ?", (sid,)).fetchone()
        return None if row is None else str(row[0])

    def distance(self, sid: int) -> float:
        """The recorded distance of submission `sid` (inf when none was computed)."""
        with self._lock:
            row = self._db.execute("SELECT distance FROM verdicts WHERE sid = ?", (sid,)).fetchone()
        return float("inf") if row is None else float(row[0])

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


class UpdateUnavailable(NetworkError):
    """A submitted update could not be fetched from storage (maybe for now)."""

    def __init__(self, message: str, *, cid: str) -> None:
        super().__init__(message)
        self.cid = cid


class UpdateUnusable(ValidationError):
    """A submitted update's CID names content that can never be a valid update (not a CID,
    over the size limit, a malformed or crafted DAG, bytes that miss the digest): the
    content behind a CID never changes, so retrying cannot help and it is rejected at once."""


def read_update(store: BlobStore, *, cid: str, digest: str) -> bytes:
    """The verified bytes of a submitted update.

    Raises `UpdateUnusable` when no attempt can ever succeed and `UpdateUnavailable` when
    a later one might (blocks missing everywhere, a peer down, a damaged local copy)."""
    from r3mes.storage.errors import InvalidCid, MalformedBlock, SizeLimitExceeded

    try:
        data = store.get_bytes(cid, max_size=MAX_UPDATE_BYTES)
    except (InvalidCid, SizeLimitExceeded, MalformedBlock) as exc:  # fixed by the CID
        raise UpdateUnusable(f"update {cid} is unusable: {exc}") from exc
    except Exception as exc:  # missing everywhere, peer down, corrupt blocks
        raise UpdateUnavailable(f"cannot fetch update {cid}: {exc}", cid=cid) from exc
    if hashlib.sha256(data).hexdigest() != digest:
        raise UpdateUnusable("stored bytes do not match the submitted digest")
    return data


@dataclass
class _Backoff:
    """Failed attempts at one submission and when the next one is due (monotonic s)."""

    failures: int = 0
    unfetchable: int = 0
    next_at: float = 0.0


class Validator(LedgerRole):
    """The validator service."""

    settings: ValidatorSettings

    def __init__(self, settings: ValidatorSettings, deps: RoleDeps) -> None:
        from prometheus_client import Counter

        from r3mes.node.artifacts import ArtifactCache

        super().__init__(settings, deps)
        self.settings = settings
        state = settings.service.state_dir
        self.artifacts = ArtifactCache(
            store=self.store,
            root=state / "artifacts",
            source=self.client,
            gradient_checkpointing=settings.gradient_checkpointing,
        )
        self.verdicts = VerdictLog(state / "verdicts.sqlite")
        from r3mes.node.dispute_agent import DisputeAgent

        self.disputes = DisputeAgent(
            client=self.client,
            key=self.key,
            store=self.store,
            artifacts=self.artifacts,
            profile=settings.profile,
            lie=settings.lie,
        )
        self._backoff: dict[int, _Backoff] = {}
        self._attested = Counter(
            "r3mes_validator_attestations",
            "Attestations sent",
            ["verdict"],
            registry=self.registry,
        )

    def on_start(self) -> None:
        from r3mes.node.registration import ensure_registered

        ensure_registered(
            self.client,
            self.key,
            role="validator",
            endpoint=f"http://127.0.0.1:{self.port}",
            stake=self.settings.stake,
        )

    def on_stop(self) -> None:
        self.verdicts.close()
        self.client.close()

    @property
    def lookback_rounds(self) -> int:
        """Rounds scanned each step: enough to see every submission whose fate is open."""
        return max(LOOKBACK_ROUNDS, self.settings.profile.settle_rounds + 1)

    def spot_rate(self) -> int:
        """The spot-check rate in force: this validator's setting, else the ledger's."""
        genesis = self.client.params().spot_check_ppm
        return spot_rate(genesis_ppm=genesis, override=self.settings.spot_ppm)

    def step(self) -> bool:
        current = self.client.current_round().number
        window = self.client.params().attestation_rounds
        rate = self.spot_rate()
        due: list[SubmissionInfo] = []
        now = time.monotonic()
        first = max(1, current - max(self.lookback_rounds, window))
        for number in range(first, current + 1):
            for sub in self.client.submissions(number):
                traced = TraceRef.of(sub.trace_cid, sub.trace_root) is not None
                if not ready(
                    rate_ppm=rate if traced else PPM,
                    submission_round=sub.round,
                    current_round=current,
                ):
                    continue  # its spot sample is drawn from the next round's seed
                if sub.round + window >= current and self._needs_verdict(sub):
                    if self._backoff.get(sub.id, _Backoff()).next_at <= now:
                        due.append(sub)
        for sub in sorted(due, key=lambda s: s.id):
            if self.stop_event.is_set():
                break
            self._judge_one(sub)
        checked = self._check_proposals(first, current)
        disputed = self._disputes(first, current)
        return bool(due) or checked or disputed

    def _disputes(self, first: int, current: int) -> bool:
        """Open a dispute over a submission this validator accepted and another rejected,
        and make its moves in every open dispute (as a party or a referee)."""
        try:
            for number in range(first, current + 1):
                for sub in self.client.submissions(number):
                    said = {a.get("validator"): a.get("verdict") for a in sub.attestations}
                    if said.get(self.address) == "accept" and "reject" in said.values():
                        if self.client.dispute(sub.id) is None:
                            self.disputes.open(sub)
            return self.disputes.step()
        except Exception as exc:  # disputes never stop the judging of new work
            logger.warning("dispute step failed: %s", classify(exc))
            return False

    def _check_proposals(self, first: int, current: int) -> bool:
        """Re-merge every pending adapter proposal assigned to this validator and attest
        whether the proposer's bytes are that merge (checked merges); True if any was."""
        from r3mes.chain.msgs import AttestAdapter
        from r3mes.node.merge_check import rebuild_proposal

        done = False
        for number in range(first, current):
            if self.stop_event.is_set():
                break
            prop = self.client.proposal(number)
            if prop is None or prop.status != "pending" or self.address not in prop.assigned:
                continue
            if any(a.get("validator") == self.address for a in prop.attestations):
                continue
            key = -number  # proposals back off beside submissions, keyed apart from them
            if self._backoff.get(key, _Backoff()).next_at > time.monotonic():
                continue
            try:
                accepted, reason = rebuild_proposal(
                    prop,
                    client=self.client,
                    artifacts=self.artifacts,
                    store=self.store,
                    profile=self.settings.profile,
                )
                if self.settings.lie:
                    accepted = not accepted  # FAULT INJECTION (settings.lie)
                verdict: Literal["accept", "reject"] = "accept" if accepted else "reject"
                msg = AttestAdapter(
                    creator=self.address, round=number, version=prop.version, verdict=verdict
                )
                self.client.sign_and_broadcast(self.key, [msg])
            except Exception as exc:  # this proposal only; retried after a backoff
                self._failed(key, classify(exc))
                continue
            self._backoff.pop(key, None)
            logger.info("adapter proposal of round %d: %s (%s)", number, verdict, reason)
            done = True
        return done

    def _judge_one(self, sub: SubmissionInfo) -> None:
        """Judge `sub`; a failure backs off this submission alone."""
        try:
            self._judge(sub)
        except UpdateUnavailable as exc:
            failures = self._failed(sub.id, exc, unfetchable=True)
            if failures > self.settings.fetch_retry.max_retries:
                from r3mes.work.verify import Verdict

                reason = f"update {exc.cid} could not be fetched ({failures} attempts): {exc}"
                self._conclude(sub, Verdict(False, reason[:400], float("inf"), False))
                self._backoff.pop(sub.id, None)  # the next step sends the rejection
        except Exception as exc:  # this submission only: the others still get judged
            self._failed(sub.id, classify(exc))
        else:
            self._backoff.pop(sub.id, None)

    def _failed(self, sid: int, error: Exception, *, unfetchable: bool = False) -> int:
        """Back `sid` off; returns how often its update could not be fetched."""
        state = self._backoff.setdefault(sid, _Backoff())
        state.failures += 1
        state.unfetchable += int(unfetchable)
        state.next_at = time.monotonic() + self.settings.fetch_retry.delay(state.failures)
        logger.warning("submission %d: attempt %d failed: %s", sid, state.failures, error)
        return state.unfetchable

    def _needs_verdict(self, sub: SubmissionInfo) -> bool:
        if sub.miner == self.address:
            return False  # never attest one's own work
        if sub.assigned and self.address not in sub.assigned:
            return False  # the ledger assigned others (none yet: it assigns at attestation)
        if not sub.assigned and sub.status != "pending":
            return False
        if any(a.get("validator") == self.address for a in sub.attestations):
            return False
        seen = self.verdicts.get(sub.id)
        return seen is None or not seen[1]

    def _judge(self, sub: SubmissionInfo) -> None:
        if self.verdicts.get(sub.id) is None:
            self._conclude(sub, self._verify(sub))
        self._send(sub)

    def _conclude(self, sub: SubmissionInfo, verdict: Verdict) -> None:
        """Record the verdict before anything is sent."""
        self.verdicts.record(sub, verdict)
        logger.info(
            "submission %d of %s: %s (%s)",
            sub.id,
            sub.miner,
            "accept" if verdict.accepted else "reject",
            verdict.reason,
        )

    def _send(self, sub: SubmissionInfo) -> None:
        """Attest the recorded verdict on `sub`."""
        seen = self.verdicts.get(sub.id)
        assert seen is not None
        self._attest(sub.id, accepted=seen[0], distance=self.verdicts.distance(sub.id))
        self.verdicts.mark_sent(sub.id)

    def base_residual(self, sub: SubmissionInfo) -> dict[str, torch.Tensor] | None:
        """The residual `sub` started from, as committed on the ledger (None: zeros).

        Raises `UpdateUnusable` when the ledger's record cannot be used and
        `UpdateUnavailable` when the bytes cannot be fetched now."""
        if not sub.base_submission_id:
            return None
        base = self.client.submission(sub.base_submission_id)
        if base.miner != sub.miner or not base.residual_cid:
            raise UpdateUnusable(f"base submission {base.id} holds no residual of {sub.miner}")
        try:
            return fetch_residual(self.store, cid=base.residual_cid, digest=base.residual_digest)
        except ValidationError as exc:
            raise UpdateUnusable(f"base residual of submission {base.id}: {exc}") from exc
        except Exception as exc:
            raise UpdateUnavailable(
                f"cannot fetch residual {base.residual_cid}: {exc}", cid=base.residual_cid
            ) from exc

    def check_residual(self, sub: SubmissionInfo, verdict: Verdict) -> Verdict:
        """`verdict`, turned into a rejection when the residual `sub` commits is not the one
        its update leaves behind."""
        from r3mes.work.verify import CROSS_CLASS_TOLERANCE, Verdict, relative_distance

        if not verdict.accepted or not sub.residual_digest or verdict.next_residual is None:
            return verdict
        if verdict.digest_match:
            ours = residual_digest(encode_residual(verdict.next_residual))
            if ours == sub.residual_digest:
                return verdict
            return Verdict(False, "committed residual differs from the replayed one", 1.0, True)
        try:
            theirs = fetch_residual(self.store, cid=sub.residual_cid, digest=sub.residual_digest)
            distance = relative_distance(theirs, verdict.next_residual)
        except ValidationError as exc:
            return Verdict(False, f"committed residual is unusable: {exc}"[:400], 1.0, False)
        except Exception as exc:
            raise UpdateUnavailable(
                f"cannot fetch residual {sub.residual_cid}: {exc}", cid=sub.residual_cid
            ) from exc
        if distance > CROSS_CLASS_TOLERANCE:
            reason = f"committed residual is {distance:.4f} from the replayed one"
            return Verdict(False, reason, distance, False)
        return verdict

    def _verify(self, sub: SubmissionInfo) -> Verdict:
        from r3mes.work.data import shard_of
        from r3mes.work.errors import TaskError
        from r3mes.work.profile import NO_ADAPTER
        from r3mes.work.verify import Verdict
        from r3mes.work.versions import start_adapter

        rnd = self.client.round(sub.round)
        try:
            data = read_update(self.store, cid=sub.cid, digest=sub.digest)
        except UpdateUnusable as exc:  # retrying cannot help: reject now
            return Verdict(False, str(exc)[:400], float("inf"), False)
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
        except TaskError as exc:
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
        try:
            residual = self.base_residual(sub)
        except UpdateUnusable as exc:
            return Verdict(False, str(exc)[:400], float("inf"), False)
        verdict = self._judge_work(
            sub,
            task=task,
            data=data,
            model=model,
            adapter_state=start_adapter(task, loaded, model),
            shard=shard,
            residual=residual,
        )
        return self.check_residual(sub, verdict)

    def _judge_work(
        self,
        sub: SubmissionInfo,
        *,
        task: Task,
        data: bytes,
        model: nn.Module,
        adapter_state: dict[str, torch.Tensor],
        shard: Shard,
        residual: dict[str, torch.Tensor] | None,
    ) -> Verdict:
        """Spot-check the work when it is traced and the next round's seed exists, else
        re-execute it in full (`r3mes.node.spot_check.judge`)."""
        from r3mes.work.executor import current_executor_class

        rate = self.spot_rate()
        ref = TraceRef.of(sub.trace_cid, sub.trace_root)
        seed = None
        if rate < PPM and ref is not None and self.client.current_round().number > sub.round:
            seed = self.client.round(sub.round + 1).seed
        return judge(
            task=task,
            submitted=data,
            trace=fetch_trace(self.store, ref) if seed is not None else None,
            trace_root=None if ref is None else ref.root,
            model=model,
            adapter_state=adapter_state,
            shard=shard,
            residual=residual,
            executor_class=current_executor_class(self.settings.device),
            device=self.settings.device,
            rate_ppm=rate,
            next_round_seed=seed,
            submission_id=sub.id,
        )

    def _attest(self, sid: int, *, accepted: bool, distance: float) -> None:
        from r3mes.chain.msgs import Attest

        if self.settings.lie:
            accepted = not accepted  # FAULT INJECTION (settings.lie)
        verdict: Literal["accept", "reject"] = "accept" if accepted else "reject"
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
        return {
            "address": self.address,
            "verdicts": self.verdicts.counts(),
            "backing_off": len(self._backoff),
        }
