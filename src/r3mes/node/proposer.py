"""The proposer role: when a round closes, merge its verified updates into version v+1.

For every closed round without an adapter, once its submissions are settled (or one more
round has passed), the proposer merges the verified updates into the adapter in force
(`r3mes.work.aggregate`), packages the result as a PEFT bundle, stores it, and sends
`ProposeAdapter`, which opens a proposal: the version is approved into the registry only
when a quorum of assigned validators re-merged the same bytes (`r3mes.node.merge_check`);
a rejected one can be proposed again. A failed proposal unpins what it stored. Each
version's held-out loss (and the base model's) is measured and published on `/stats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from r3mes.node.errors import classify
from r3mes.node.ledger_role import LedgerRole, LedgerSettings, RoleDeps

if TYPE_CHECKING:
    from r3mes.chain.artifact_record import ArtifactRecord
    from r3mes.chain.client_types import RoundInfo, SubmissionInfo
    from r3mes.work.task import Task

logger = logging.getLogger(__name__)

LOOKBACK_ROUNDS = 4
MAX_UPDATE_BYTES = 64 << 20


@dataclass(frozen=True)
class ProposerSettings(LedgerSettings):
    """Everything a proposer needs besides its key."""

    ROLE: ClassVar[str] = "proposer"

    evaluate: bool = True
    """Measure held-out loss of each version (and the base model) for `/stats`."""


class Proposer(LedgerRole):
    """The proposer service."""

    settings: ProposerSettings

    def __init__(self, settings: ProposerSettings, deps: RoleDeps) -> None:
        from prometheus_client import Gauge

        from r3mes.node.artifacts import ArtifactCache

        super().__init__(settings, deps)
        self.settings = settings
        state = settings.service.state_dir
        self.artifacts = ArtifactCache(
            store=self.store, root=state / "artifacts", source=self.client
        )
        self._history_path = state / "versions.json"
        self.history: list[dict[str, Any]] = self._load_history()
        self.base_loss: float | None = None
        self._version = Gauge(
            "r3mes_proposer_adapter_version",
            "Latest proposed adapter version",
            registry=self.registry,
        )
        self._loss = Gauge(
            "r3mes_proposer_heldout_loss",
            "Held-out loss of the latest version",
            registry=self.registry,
        )

    # -- lifecycle --------------------------------------------------------------------

    def on_start(self) -> None:
        from r3mes.node.registration import ensure_registered

        ensure_registered(
            self.client, self.key, role="proposer", endpoint=f"http://127.0.0.1:{self.port}"
        )

    def on_stop(self) -> None:
        self.client.close()

    def _load_history(self) -> list[dict[str, Any]]:
        try:
            raw = json.loads(self._history_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable %s: %s", self._history_path, exc)
            return []
        return [x for x in raw if isinstance(x, dict)] if isinstance(raw, list) else []

    def _save_history(self) -> None:
        self._history_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._history_path.with_name(f".{self._history_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.history, indent=2))
        os.replace(tmp, self._history_path)

    # -- the loop ---------------------------------------------------------------------

    def step(self) -> bool:
        current = self.client.current_round()
        height = self.client.status().height
        for number in range(max(1, current.number - LOOKBACK_ROUNDS), current.number):
            rnd = self.client.round(number)
            if rnd.status != "closed" or rnd.proposed_version:
                continue
            review = self.client.proposal(number)
            if review is not None and review.status == "pending":
                continue  # its validators are re-merging it (checked merge)
            subs = self.client.submissions(number)
            verified = [s for s in subs if s.status == "verified"]
            unsettled = any(s.status == "pending" for s in subs)
            patience_over = height > rnd.close_height + (rnd.close_height - rnd.open_height + 1)
            if (unsettled and not patience_over) or not verified:
                continue
            self.propose(rnd, verified)
            return True
        return False

    def _active_adapter(self) -> ArtifactRecord | None:
        adapter_id = self.client.params().adapter_id
        adapters = [a for a in self.client.approved_artifacts("adapter") if a.id == adapter_id]
        return max(adapters, key=lambda a: a.version, default=None)

    def propose(self, rnd: RoundInfo, verified: list[SubmissionInfo]) -> dict[str, Any]:
        """Merge `verified` updates of `rnd` into the next version and propose it."""
        from r3mes.chain.msgs import ProposeAdapter
        from r3mes.node.merge_check import build_version

        active = self._active_adapter()
        parent = active.version if active else 0
        built = build_version(
            rnd=rnd,
            verified=verified,
            parent_version=parent,
            parent_cid=active.cid if active else None,
            artifacts=self.artifacts,
            store=self.store,
            profile=self.settings.profile,
        )
        bundle, task, model, merged, info = (
            built.bundle,
            built.task,
            built.model,
            built.merged,
            built.info,
        )
        cid = self.store.add_bytes(bundle, pin=True)
        msg = ProposeAdapter(
            creator=self.address,
            round=rnd.number,
            adapter_cid=cid,
            sha256=hashlib.sha256(bundle).hexdigest(),
            size=len(bundle),
            version=parent + 1,
            parent_version=parent,
            submission_ids=info.submission_ids,
        )
        try:
            self.client.sign_and_broadcast(self.key, [msg])
        except Exception as exc:
            self._unpin(cid)
            raise classify(exc) from exc
        entry = {
            "version": parent + 1,
            "round": rnd.number,
            "cid": cid,
            "submissions": list(info.submission_ids),
            **self._evaluate(task, model, merged),
        }
        self.history.append(entry)
        self._save_history()
        self._version.set(parent + 1)
        if entry.get("heldout_loss") is not None:
            self._loss.set(entry["heldout_loss"])
        logger.info("proposed adapter v%d for round %d", parent + 1, rnd.number, extra=entry)
        return entry

    def _unpin(self, cid: str) -> None:
        try:
            self.store.unpin(cid)
        except Exception as exc:
            logger.error("could not unpin %s after a failed proposal: %s", cid, exc)

    def _evaluate(self, task: Task, model: Any, state: dict[str, Any]) -> dict[str, Any]:
        if not self.settings.evaluate:
            return {}
        from r3mes.work.evaluate import heldout_loss

        dataset = self.artifacts.dataset(task.dataset_cid)
        chunks = self.settings.profile.eval_chunks
        if self.base_loss is None:
            self.base_loss = heldout_loss(model, None, dataset, max_chunks=chunks)
        loss = heldout_loss(
            model, state, dataset, max_chunks=chunks, lora_config=task.lora_config()
        )
        return {"heldout_loss": round(loss, 6), "base_loss": round(self.base_loss, 6)}

    def role_stats(self) -> dict[str, Any]:
        return {"address": self.address, "base_loss": self.base_loss, "versions": self.history}
