"""A role service as a real process: HTTP face, pid file, JSON logs, SIGTERM, stale pids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.wait import wait_until

from r3mes.node.errors import ServiceError, ValidationError
from r3mes.node.runtime.service import ServiceConfig
from r3mes.paths import Home
from r3mes.runtime.pidfile import (
    list_services,
    pid_path,
    read_pid_file,
    stop_service,
    write_pid_file,
)

SCRIPT = """
import sys, time, logging
from r3mes.node.runtime.service import RoleService, ServiceConfig, run_with_logging
from r3mes.paths import Home

class Counting(RoleService):
    def __init__(self, config):
        super().__init__(config)
        self.count = 0
        self.finished = 0
    def step(self):
        self.count += 1
        time.sleep(0.2)          # in-flight work that SIGTERM must let finish
        self.finished += 1
        logging.getLogger("test").info("step done", extra={"count": self.count})
        return True
    def role_stats(self):
        return {"count": self.count}
    def on_stop(self):
        balanced = self.count == self.finished
        logging.getLogger("test").info("clean stop", extra={"balanced": balanced})

home = Home(root=__import__("pathlib").Path(sys.argv[1]))
config = ServiceConfig(role="validator", name="t1", home=home)
sys.exit(run_with_logging(Counting(config)))
"""


def _wait_for_pidfile(path: Path, timeout: float = 60.0) -> None:
    wait_until(path.exists, timeout=timeout, what=str(path))


def test_service_process_lifecycle(tmp_path: Path) -> None:
    home = Home(root=tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)])
    try:
        pidfile = pid_path(home.run, "validator", "t1")
        _wait_for_pidfile(pidfile)
        info = read_pid_file(pidfile)
        assert info is not None and info.pid == proc.pid and info.alive()
        with httpx.Client(base_url=info.url, timeout=5) as client:
            deadline = time.monotonic() + 60
            while client.get("/stats").json().get("count", 0) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert client.get("/health").json()["role"] == "validator"
            metrics = client.get("/metrics").text
            assert 'r3mes_service_steps_total{outcome="work"}' in metrics
            assert "r3mes_service_up 1.0" in metrics
        # a second instance with the same name refuses to start
        second = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, timeout=60
        )
        assert second.returncode != 0 and b"already running" in second.stderr
        # `stop` from "another shell": SIGTERM via the pid file
        assert stop_service(pidfile, timeout=60) == "stopped"
        assert proc.wait(30) == 0
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(x) for x in (home.logs / "validator-t1.log").read_text().splitlines()]
    assert all({"ts", "level", "msg", "role", "service"} <= set(line) for line in lines)
    stop = [line for line in lines if line["msg"] == "clean stop"]
    assert stop and stop[0]["balanced"] is True, "the in-flight step finished before exit"


def test_stale_pid_files(tmp_path: Path) -> None:
    home = Home(root=tmp_path)
    path = pid_path(home.run, "miner", "old")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps({"pid": dead.pid, "role": "miner", "name": "old", "port": 1, "started_at": 0.0})
    )
    assert stop_service(path) == "stale" and not path.exists()
    # pid reuse: our own pid with the wrong start time is stale too
    path.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "role": "miner",
                "name": "old",
                "port": 1,
                "started_at": 0.0,
                "start_ticks": 1,
            }
        )
    )
    info = read_pid_file(path)
    assert info is not None and not info.alive()
    write_pid_file(path, role="miner", name="old", port=5)  # stale file is replaced
    assert read_pid_file(path).port == 5  # type: ignore[union-attr]
    path.write_text("{not json")
    with pytest.raises(ServiceError, match="malformed"):
        read_pid_file(path)
    assert list_services(home.run) == [(path, None)]
    with pytest.raises(ServiceError, match="not running"):
        stop_service(home.run / "nothing.pid")


def test_service_config_validation(tmp_path: Path) -> None:
    home = Home(root=tmp_path)
    with pytest.raises(ValidationError, match="unknown role"):
        ServiceConfig(role="king", name="a", home=home)
    with pytest.raises(ValidationError, match="invalid service name"):
        ServiceConfig(role="miner", name="../x", home=home)
    with pytest.raises(ValidationError, match="port"):
        ServiceConfig(role="miner", name="a", home=home, port=70000)
