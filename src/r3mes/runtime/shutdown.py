"""A graceful stop on SIGTERM or SIGINT, alike: the first asks, the second interrupts.

Long-running commands install one `Shutdown` as early as they can, so a stop asked for
while they are still starting (loading a model, importing torch) is not lost: whatever
runs next sees `event` set and winds down. Both signals mean the same request, so a clean
stop exits 0 whichever of them arrived.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

logger = logging.getLogger(__name__)


class Shutdown:
    """The stop request of one process; `install()` wires it to SIGTERM and SIGINT."""

    def __init__(self, *, interrupt_on_second: bool = True) -> None:
        self.event = threading.Event()
        self.signals_seen = 0
        self.interrupt_on_second = interrupt_on_second
        """Raise `KeyboardInterrupt` on a second signal (cut the current step short)."""

    def install(self) -> None:
        """Handle SIGTERM and SIGINT (only from the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def request(self) -> None:
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_seen += 1
        if self.signals_seen == 1 or not self.interrupt_on_second:
            logger.info("signal %d: stopping", signum)
            self.event.set()
            return
        logger.warning("signal %d again: interrupting the current step", signum)
        raise KeyboardInterrupt
