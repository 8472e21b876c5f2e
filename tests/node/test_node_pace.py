"""`RoundPace`: a miner starts only the work it can finish before its round closes."""

from __future__ import annotations

import pytest

from r3mes.node.miner.pace import RoundPace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_work_that_cannot_finish_waits_for_the_next_round() -> None:
    clock = Clock()
    pace = RoundPace(clock=clock)
    # nothing learned yet: always try
    assert pace.fits(height=15, open_height=10, close_height=17)
    for height in range(10, 15):  # 0.5 s blocks
        pace.observe_height(height)
        pace.observe_height(height)  # a repeat adds nothing
        clock.now += 0.5
    assert pace.block_s() == pytest.approx(0.5)
    pace.record_work(2.0)  # four blocks, plus the one that includes it
    assert pace.fits(height=12, open_height=10, close_height=17)
    assert not pace.fits(height=13, open_height=10, close_height=17)
    # a transaction longer than the whole round: still tried as the round opens
    pace.record_work(10.0)
    assert pace.work_s == pytest.approx(6.0)  # smoothed: half old, half new
    assert pace.fits(height=11, open_height=10, close_height=17)
    assert not pace.fits(height=12, open_height=10, close_height=17)


def test_bad_durations_are_ignored() -> None:
    pace = RoundPace(clock=Clock())
    pace.record_work(-1.0)
    pace.record_work(float("nan"))
    assert pace.work_s is None and pace.block_s() is None


def test_a_round_shorter_than_a_transaction_is_named_with_its_figures() -> None:
    """Issue 19 item 2 under load: 8 blocks of 0.5 s against 5 s transactions cannot work;
    the miner says so with the figures and what to change, instead of silently missing."""
    clock = Clock()
    pace = RoundPace(clock=clock)
    assert pace.shortfall(round_blocks=8) is None  # nothing learned yet
    for height in range(10, 15):
        pace.observe_height(height)
        clock.now += 0.5
    pace.record_work(1.0)
    assert pace.shortfall(round_blocks=8) is None  # 1.0 s + the including block < 4 s
    pace.record_work(9.0)  # smoothed: 5.0 s
    why = pace.shortfall(round_blocks=8)
    assert why is not None
    assert "5.0 s" in why and "4.0 s" in why and "8 blocks of 0.50 s" in why
    assert "--round-blocks" in why
    assert pace.shortfall(round_blocks=20) is None  # the default 20-block round fits
