"""Pid files under `$R3MES_HOME/run`: one per running service (every role service, and the
devnet ledger under its own name `devnet.json`).

A pid file is a small JSON object (pid, role, name, host, port, process start time). The
start time guards against pid reuse: a file whose pid now belongs to another process is
*stale*, as is one whose process is gone; stale files are replaced, never trusted.
`stop_service` and `service_status` work from any shell that knows `R3MES_HOME`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r3mes.runtime.errors import ServiceError

_MAX_PIDFILE_BYTES = 4096


def process_start_time(pid: int) -> int | None:
    """Kernel start time of `pid` in clock ticks (Linux), or None if unknown/gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    fields = raw.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 overall: starttime
    except (IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = raw.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] in ("Z", "X")


def pid_alive(pid: int) -> bool:
    """True when `pid` runs (an exited but unreaped zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


@dataclass(frozen=True)
class PidInfo:
    """What a running service writes about itself."""

    pid: int
    role: str
    name: str
    port: int
    started_at: float
    start_ticks: int | None
    host: str = "127.0.0.1"

    def alive(self) -> bool:
        """True when the process still runs and is the one that wrote the file."""
        if not pid_alive(self.pid):
            return False
        if self.start_ticks is None:
            return True
        now = process_start_time(self.pid)
        return now is None or now == self.start_ticks

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def service_id(role: str, name: str) -> str:
    return f"{role}-{name}"


def pid_path(run_dir: Path, role: str, name: str) -> Path:
    return run_dir / f"{service_id(role, name)}.pid"


def read_pid_file(path: Path) -> PidInfo | None:
    """Parse a pid file; None when absent. Malformed files raise `ServiceError`."""
    try:
        raw = path.read_bytes()[:_MAX_PIDFILE_BYTES]
    except FileNotFoundError:
        return None
    try:
        data: dict[str, Any] = json.loads(raw)
        return PidInfo(
            pid=int(data["pid"]),
            role=str(data["role"]),
            name=str(data["name"]),
            port=int(data["port"]),
            started_at=float(data["started_at"]),
            start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
            host=str(data.get("host", "127.0.0.1")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError(
            f"pid file {path} is malformed ({exc}); remove it if no service is running"
        ) from exc


def write_pid_file(
    path: Path,
    *,
    role: str,
    name: str,
    port: int,
    host: str = "127.0.0.1",
    stop_hint: str | None = None,
) -> PidInfo:
    """Claim `path` for this process; refuses when a live service already holds it.

    `stop_hint` is the command the refusal names (default `r3mes ROLE stop --name NAME`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = read_pid_file(path)
    except ServiceError:
        existing = None  # unreadable: treat as stale
    if existing is not None and existing.alive() and existing.pid != os.getpid():
        raise ServiceError(
            f"{service_id(role, name)} is already running (pid {existing.pid}); "
            f"stop it with `{stop_hint or f'r3mes {role} stop --name {name}'}`"
        )
    info = PidInfo(
        pid=os.getpid(),
        role=role,
        name=name,
        port=port,
        started_at=time.time(),
        start_ticks=process_start_time(os.getpid()),
        host=host,
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, path)
    return info


def remove_pid_file(path: Path) -> None:
    """Remove `path` if it belongs to this process."""
    with contextlib.suppress(ServiceError):
        info = read_pid_file(path)
        if info is not None and info.pid == os.getpid():
            path.unlink(missing_ok=True)


def stop_service(path: Path, *, timeout: float = 30.0, kill_after: bool = True) -> str:
    """SIGTERM the service behind `path` and wait; returns 'stopped', 'killed' or 'stale'.

    A stale pid file (process gone or pid reused) is removed and reported as 'stale'.
    Raises `ServiceError` when no pid file exists.
    """
    info = read_pid_file(path)
    if info is None:
        raise ServiceError(f"no pid file at {path}: the service is not running")
    if not info.alive():
        path.unlink(missing_ok=True)
        return "stale"
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not info.alive():
            path.unlink(missing_ok=True)
            return "stopped"
        time.sleep(0.1)
    if not kill_after:
        raise ServiceError(f"pid {info.pid} did not stop within {timeout:.0f}s")
    os.kill(info.pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return "killed"


def list_services(run_dir: Path) -> list[tuple[Path, PidInfo | None]]:
    """Every pid file under `run_dir` with its parsed info (None when malformed)."""
    out: list[tuple[Path, PidInfo | None]] = []
    for path in sorted(run_dir.glob("*.pid")) if run_dir.exists() else []:
        try:
            out.append((path, read_pid_file(path)))
        except ServiceError:
            out.append((path, None))
    return out
