"""Child processes of `r3mes up`: start each role as a real subprocess, stop them in order.

Children run in their own session, so a Ctrl-C in the terminal reaches only `r3mes up`,
which then stops them in reverse start order (serving, proposer, validator, miners, chain)
with SIGTERM, waiting for each to finish or roll back its in-flight work, and SIGKILLs only
those that ignore it past the timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from r3mes.node.errors import ServiceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessSpec:
    """How to start one child."""

    name: str
    """Unique label (e.g. "miner-1")."""
    argv: tuple[str, ...]
    """Command line; argv[0] is an executable path."""
    log_path: Path
    """stdout and stderr of the child are appended here."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment variables on top of the parent's."""


@dataclass
class _Child:
    spec: ProcessSpec
    proc: subprocess.Popen[bytes]
    started_at: float


class Supervisor:
    """Starts children, notices when they die, and stops them all cleanly."""

    def __init__(self) -> None:
        self._children: list[_Child] = []

    def spawn(self, spec: ProcessSpec) -> subprocess.Popen[bytes]:
        if any(c.spec.name == spec.name for c in self._children):
            raise ServiceError(f"a child named {spec.name!r} is already running")
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env}
        with open(spec.log_path, "ab") as log:
            proc = subprocess.Popen(
                list(spec.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._children.append(_Child(spec, proc, time.time()))
        logger.info("started %s (pid %d)", spec.name, proc.pid)
        return proc

    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.proc.pid for c in self._children}

    def exited(self) -> list[tuple[str, int]]:
        """Children that have exited, with their return codes."""
        out = []
        for child in self._children:
            code = child.proc.poll()
            if code is not None:
                out.append((child.spec.name, code))
        return out

    def stop(self, name: str, *, timeout: float = 30.0) -> int:
        """SIGTERM one child and wait (SIGKILL after `timeout`); returns its exit code."""
        for child in self._children:
            if child.spec.name == name:
                code = _terminate(child.proc, timeout=timeout)
                self._children.remove(child)
                return code
        raise ServiceError(f"no child named {name!r}")

    def stop_all(self, *, timeout: float = 30.0) -> dict[str, int]:
        """Stop every child, last started first; returns exit codes by name."""
        codes: dict[str, int] = {}
        for child in reversed(self._children):
            codes[child.spec.name] = _terminate(child.proc, timeout=timeout)
            logger.info("stopped %s (exit %d)", child.spec.name, codes[child.spec.name])
        self._children.clear()
        return codes


def _terminate(proc: subprocess.Popen[bytes], *, timeout: float) -> int:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, timeout)
        proc.kill()
        return proc.wait(10)
