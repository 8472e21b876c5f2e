"""Spot checks in the running network: the rate, the seed, the trace, and the verdict.

A miner publishes its step trace (`r3mes.work.trace`) next to its update and commits to its
CID and Merkle root in `SubmitGradient` (`trace_cid`, `trace_root`). A validator judges the
submission by a spot check (`r3mes.work.spot.spot_verify`) at the network's rate, the genesis
parameter `spot_check_ppm` (a validator's own `--spot-ppm` setting overrides it; 1_000_000
means full re-execution), seeded by the NEXT round's seed: the hash of the last block of the
submission's round, which did not exist when the miner signed. So a spot check waits until
that round is open (`ready`); the proposer waits for the round to close anyway. A submission
without a trace, whose trace cannot be fetched, or judged at the full rate is re-executed in
full (`r3mes.work.verify`); a failed spot check escalates to full re-execution by itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from r3mes.node.errors import ValidationError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from r3mes.node.artifacts import BlobStore
    from r3mes.work.data import Shard
    from r3mes.work.task import Task
    from r3mes.work.verify import Verdict

logger = logging.getLogger(__name__)

PPM = 1_000_000
_CID = re.compile(r"^[A-Za-z0-9]{1,128}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def spot_rate(*, genesis_ppm: object, override: int | None) -> int:
    """The rate (ppm of checkpoint segments) this validator spot-checks at.

    `override` (the validator's setting) wins; else the ledger's genesis `spot_check_ppm`;
    None for both means full re-execution (1_000_000).
    """
    rate = override if override is not None else genesis_ppm
    if rate is None:
        return PPM
    if isinstance(rate, bool) or not isinstance(rate, int) or not 0 < rate <= PPM:
        raise ValidationError(f"spot-check rate must be an integer in (0, {PPM}] ppm, got {rate!r}")
    return rate


def ready(*, rate_ppm: int, submission_round: int, current_round: int) -> bool:
    """True when a submission can be judged now: at the full rate at once; a spot check once
    the next round (whose seed draws its sample) is open."""
    return rate_ppm >= PPM or current_round > submission_round


@dataclass(frozen=True)
class TraceRef:
    """Where a submission's trace lives and what it must hash to (from the ledger)."""

    cid: str
    root: str

    @classmethod
    def of(cls, cid: object, root: object) -> TraceRef | None:
        """The reference, or None when the submission committed none (or a malformed one)."""
        if not (isinstance(cid, str) and isinstance(root, str)):
            return None
        if not (_CID.fullmatch(cid) and _HEX64.fullmatch(root)):
            return None
        return cls(cid, root)


def fetch_trace(store: BlobStore, ref: TraceRef | None) -> bytes | None:
    """The trace bytes, or None when there is none or they cannot be fetched (full re-run)."""
    from r3mes.work.trace import MAX_TRACE_BYTES

    if ref is None:
        return None
    try:
        return store.get_bytes(ref.cid, max_size=MAX_TRACE_BYTES)
    except Exception as exc:  # missing, too large, peer down: full re-execution decides
        logger.info("trace %s unavailable, re-executing in full: %s", ref.cid, exc)
        return None


def judge(
    *,
    task: Task,
    submitted: bytes,
    trace: bytes | None,
    trace_root: str | None,
    model: nn.Module,
    adapter_state: Mapping[str, torch.Tensor] | None,
    shard: Shard,
    residual: Mapping[str, torch.Tensor] | None,
    executor_class: str,
    device: str,
    rate_ppm: int,
    next_round_seed: str | None,
    submission_id: int,
) -> Verdict:
    """The verdict on one submission: a spot check when possible, else full re-execution."""
    from r3mes.work.spot import spot_seed, spot_verify
    from r3mes.work.verify import verify

    if rate_ppm >= PPM or trace is None or next_round_seed is None:
        return verify(
            task=task,
            submitted=submitted,
            model=model,
            adapter_state=adapter_state,
            shard=shard,
            residual=residual,
            executor_class=executor_class,
            device=device,
        )
    result = spot_verify(
        task=task,
        submitted=submitted,
        trace_bytes=trace,
        trace_root=trace_root,
        model=model,
        adapter_state=adapter_state,
        shard=shard,
        residual=residual,
        executor_class=executor_class,
        seed=spot_seed(next_round_seed=next_round_seed, submission_id=submission_id),
        rate_ppm=rate_ppm,
        device=device,
    )
    logger.info(
        "submission %d: spot check %s (%s; %d steps re-run)",
        submission_id,
        "escalated" if result.escalated else "done",
        result.spot_reason,
        result.steps_run,
    )
    return result.verdict
