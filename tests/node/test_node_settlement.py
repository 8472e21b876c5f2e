"""The residual rule miners and validators share: decided by the ledger, never by timing."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from r3mes.chain.client_types import SubmissionInfo
from r3mes.node.miner.settlement import Fate, deadline_height, residual_fate, settled_height


def _sub(status: str, *attestations: tuple[str, int]) -> SubmissionInfo:
    atts: list[dict[str, Any]] = [
        {"validator": f"v{i}", "verdict": v, "distance_ppm": 0, "height": h}
        for i, (v, h) in enumerate(attestations)
    ]
    return SubmissionInfo(1, 3, 0, "m", "cid", "d", 25, status, atts)


def test_deadline_is_settle_rounds_after_the_close() -> None:
    # round 3 of 10-block rounds spans heights 21..30
    assert deadline_height(open_height=21, close_height=30, settle_rounds=0) == 30
    assert deadline_height(open_height=21, close_height=30, settle_rounds=2) == 50


def test_fates() -> None:
    on_time = _sub("verified", ("reject", 31), ("accept", 35), ("accept", 40))
    assert settled_height(on_time) == 40
    assert residual_fate(on_time, deadline=40, chain_height=99) is Fate.PROMOTE
    assert residual_fate(on_time, deadline=39, chain_height=99) is Fate.DROP, "verified late"
    assert residual_fate(_sub("rejected", ("reject", 31)), deadline=50, chain_height=32) is (
        Fate.DROP
    )
    assert residual_fate(_sub("pending"), deadline=50, chain_height=50) is Fate.WAIT
    assert residual_fate(_sub("pending"), deadline=50, chain_height=51) is Fate.DROP, "expired"
    assert residual_fate(None, deadline=50, chain_height=40) is Fate.WAIT
    assert residual_fate(None, deadline=50, chain_height=60) is Fate.DROP


@given(
    settle=st.integers(1, 500),
    deadline=st.integers(1, 1000),
    seen_at=st.integers(1, 2000),
)
def test_a_decided_fate_never_changes(settle: int, deadline: int, seen_at: int) -> None:
    """Whoever looks later (a validator attesting late) reaches the same fate as one who
    looked earlier and saw a decision (a miner that gave up waiting)."""
    pending = residual_fate(_sub("pending"), deadline=deadline, chain_height=seen_at)
    later = residual_fate(
        _sub("verified", ("accept", seen_at + settle)),
        deadline=deadline,
        chain_height=seen_at + settle,
    )
    if pending is not Fate.WAIT:
        assert later is pending is Fate.DROP
