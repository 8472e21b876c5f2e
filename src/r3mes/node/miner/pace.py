"""Whether a mining transaction started now can finish while its round is still open.

The ledger refuses a submission once its round has closed, so work begun too late in a
short round is wasted (trained, stored, proved, then rolled back) and the CPU it burns
slows every other role on the machine. `RoundPace` learns two figures as the miner runs -
seconds per block (from the heights it sees) and seconds per mining transaction (from the
ones it ran) - and says whether enough blocks are left. A round that has only just opened
is always worth trying: it is the best chance that round will ever give.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

WORK_SMOOTHING = 0.5
"""Weight of the newest transaction in the running estimate of its duration."""


class RoundPace:
    """Block time and mining-transaction time, as observed; pure bookkeeping, no I/O."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, window: int = 32) -> None:
        self._clock = clock
        self._heights: deque[tuple[int, float]] = deque(maxlen=window)
        self.work_s: float | None = None
        """Smoothed seconds one mining transaction takes (None before the first)."""

    def observe_height(self, height: int) -> None:
        """Note the ledger's height as seen now (repeats of a height are ignored)."""
        if not self._heights or height > self._heights[-1][0]:
            self._heights.append((height, self._clock()))

    def block_s(self) -> float | None:
        """Seconds per block over the heights seen (None before two distinct blocks)."""
        if len(self._heights) < 2:
            return None
        (h0, t0), (h1, t1) = self._heights[0], self._heights[-1]
        return (t1 - t0) / (h1 - h0)

    def record_work(self, seconds: float) -> None:
        """Note how long a mining transaction took, committed or not."""
        if seconds < 0 or not math.isfinite(seconds):
            return
        if self.work_s is None:
            self.work_s = seconds
        else:
            self.work_s = WORK_SMOOTHING * seconds + (1 - WORK_SMOOTHING) * self.work_s

    def fits(self, *, height: int, open_height: int, close_height: int) -> bool:
        """True when work started at `height` should be included by `close_height`."""
        block_s = self.block_s()
        if self.work_s is None or not block_s or height <= open_height + 1:
            return True
        needed = math.ceil(self.work_s / block_s) + 1  # +1: the block that includes it
        return close_height - height >= needed

    def shortfall(self, *, round_blocks: int) -> str | None:
        """Why a `round_blocks` round is too short for this miner, or None when its usual
        transaction (plus the block that includes it) fits in a whole round, or nothing
        has been learned yet. Training runs on one core, so its time grows with the
        machine's run queue: the figure says what the load is doing to short rounds."""
        block_s = self.block_s()
        if self.work_s is None or not block_s:
            return None
        round_s = round_blocks * block_s
        if self.work_s + block_s <= round_s:
            return None
        return (
            f"mining transactions take {self.work_s:.1f} s but a round lasts {round_s:.1f} s "
            f"({round_blocks} blocks of {block_s:.2f} s): most rounds close before this "
            "miner submits; give the network longer rounds (r3mes up --round-blocks, "
            "--block-interval) or take load off this machine"
        )
