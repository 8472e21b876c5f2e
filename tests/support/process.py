"""Waiting on a child process's output: a condition to wait for, never a fixed sleep."""

from __future__ import annotations

import subprocess
import threading
import time


class OutputWatcher:
    """Reads a child's merged stdout on a thread; `wait_for` blocks until a line appears."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stdout is None:
            raise ValueError("start the process with stdout=subprocess.PIPE")
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, *, timeout: float) -> str:
        """The first line containing `needle`; AssertionError if the process ends first or
        `timeout` seconds pass (the output so far is in the message)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                done = not self._thread.is_alive()
                left = deadline - time.monotonic()
                if done or left <= 0:
                    why = "exited" if done else f"not seen within {timeout:.0f}s"
                    raise AssertionError(f"{needle!r} {why}; output:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 1.0))

    def finish(self, timeout: float) -> str:
        """Wait for the process and the reader; the whole output."""
        self.proc.wait(timeout)
        self._thread.join(timeout)
        return self.text
