"""A real `r3mes backend start` child process on 127.0.0.1, for crash and multi-process tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from support.net import free_port
from support.process import OutputWatcher

SECRETS = {
    "R3MES_JWT_SECRET": "test-jwt-secret-0123456789abcdef",
    "R3MES_KEY_PEPPER": "test-key-pepper-0123456789abcdef",
}


class BackendProcess:
    """One backend child; `url` once healthy; `kill()` is SIGKILL (no clean shutdown)."""

    def __init__(self, home: Path, *, port: int | None = None, **env: str) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("R3MES_")}
        self.env = {**inherited, **SECRETS, "R3MES_FOLLOW_CHAIN": "false", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: OutputWatcher | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        """Run it; return once /health answers (a fresh interpreter on a busy box is slow)."""
        command = [
            sys.executable,
            "-m",
            "r3mes.cli.main",
            "backend",
            "start",
            "--home",
            str(self.home),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = OutputWatcher(self.proc)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"backend exited {self.proc.returncode}:\n{self.output.text}")
            try:
                if httpx.get(self.url + "/health", timeout=10.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"backend not healthy in {timeout_s} s:\n{self.output.text}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def backend_process(home: Path, **env: str) -> Iterator[BackendProcess]:
    process = BackendProcess(home, port=None, **env)
    process.start()
    try:
        yield process
    finally:
        process.stop()
