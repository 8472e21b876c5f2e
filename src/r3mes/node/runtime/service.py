"""The role service base: a long-running loop with an HTTP face and a clean shutdown.

`RoleService.run()` claims the pid file, starts the HTTP server, calls `on_start()`, then
`step()` until asked to stop, and always undoes all of that on the way out. The first
SIGTERM/SIGINT asks the loop to stop after the current step (in-flight work finishes or
rolls back by itself) and the process exits 0 whichever signal it was; a second
SIGINT/SIGTERM raises `KeyboardInterrupt` inside the step so the step's own rollback runs
at once (exit 130). A `Shutdown` installed by the CLI before the role is built carries a
stop asked for during start-up into `run()`, which then exits 0 without starting.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r3mes.node.errors import NodeError, RetryableError, ValidationError, classify
from r3mes.paths import Home
from r3mes.runtime.pidfile import pid_path, remove_pid_file, service_id, write_pid_file
from r3mes.runtime.shutdown import Shutdown

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)

ROLES = ("miner", "validator", "proposer", "serving")


@dataclass(frozen=True)
class ServiceConfig:
    """Identity and loop settings shared by every role service."""

    role: str
    """One of `ROLES`."""
    name: str
    """Instance name, unique per role on one machine (used in pid and log file names)."""
    home: Home
    """Where pid files, logs and state live."""
    host: str = "127.0.0.1"
    """Interface of the HTTP server; loopback by default."""
    port: int = 0
    """HTTP port; 0 picks a free one (written to the pid file)."""
    idle_interval: float = 1.0
    """Seconds to wait after a step that found nothing to do."""
    error_interval: float = 2.0
    """Seconds to wait after a step failed with a retryable error."""
    start_delay_s: float = 0.0
    """TEST-ONLY FAULT INJECTION (R3MES_TEST_START_DELAY): seconds to wait, stoppable,
    before `on_start`, so tests can exercise a network whose roles are slow to start."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValidationError(f"unknown role {self.role!r}; expected one of {ROLES}")
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ValidationError(
                f"invalid service name {self.name!r}: use letters, digits, '-' and '_'"
            )
        if not 0 <= self.port <= 65535:
            raise ValidationError(f"port {self.port} out of range")
        if self.idle_interval < 0 or self.error_interval < 0:
            raise ValidationError("intervals must be >= 0")
        if not 0 <= self.start_delay_s <= 3600:
            raise ValidationError(f"start delay must be in [0, 3600] s, got {self.start_delay_s}")

    @property
    def service_id(self) -> str:
        return service_id(self.role, self.name)

    @property
    def state_dir(self) -> Path:
        return self.home.root / "nodes" / self.service_id


class RoleService(ABC):
    """Base class of `Miner`, `Validator`, `Proposer` and `ServingNode`."""

    def __init__(self, config: ServiceConfig, *, shutdown: Shutdown | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.config = config
        self.registry: CollectorRegistry = CollectorRegistry()
        self.shutdown = shutdown or Shutdown()
        self.stop_event = self.shutdown.event
        self.ready = threading.Event()
        """Set once `on_start` finished: the service does its work from then on."""
        self.started_at = time.time()
        self.port: int | None = None
        self._steps = Counter(
            "r3mes_service_steps", "Loop steps run", ["outcome"], registry=self.registry
        )
        self._up = Gauge(
            "r3mes_service_up", "1 while the service loop runs", registry=self.registry
        )

    # -- what roles implement ---------------------------------------------------------

    @abstractmethod
    def step(self) -> bool:
        """Do one unit of work; True if something was done (loop again at once)."""

    def on_start(self) -> None:
        """Prepare before the loop (register on chain, recover journals ...)."""
        logger.debug("%s: nothing to prepare", self.config.service_id)

    def on_stop(self) -> None:
        """Release resources after the loop ended."""
        logger.debug("%s: nothing to release", self.config.service_id)

    def role_stats(self) -> dict[str, Any]:
        """Role-specific figures merged into `/stats`."""
        return {}

    def add_routes(self, app: FastAPI) -> None:
        """Add role-specific HTTP routes (none by default)."""
        logger.debug("%s: no extra routes on %s", self.config.service_id, app.title)

    # -- common behaviour -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """`status` is "starting" until `on_start` finished, then "ok", then "stopping"."""
        status = "ok" if self.ready.is_set() else "starting"
        return {
            "status": "stopping" if self.stop_event.is_set() else status,
            "role": self.config.role,
            "name": self.config.name,
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def stats(self) -> dict[str, Any]:
        return {"service": self.health(), **self.role_stats()}

    def request_stop(self) -> None:
        self.stop_event.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on stop; True when stopping."""
        return self.stop_event.wait(seconds)

    def run(self) -> int:
        """Run until stopped; returns a process exit code (0 on a clean stop)."""
        from r3mes.node.runtime.http import HttpServer, create_app

        self.shutdown.install()
        pidfile = pid_path(self.config.home.run, self.config.role, self.config.name)
        server = HttpServer(create_app(self), host=self.config.host, port=self.config.port)
        self.port = server.port
        write_pid_file(pidfile, role=self.config.role, name=self.config.name, port=server.port)
        server.start()
        logger.info(
            "%s listening on http://%s:%d", self.config.service_id, server.host, server.port
        )
        try:
            if self.config.start_delay_s and self.wait(self.config.start_delay_s):
                return 0  # asked to stop while (artificially) starting up
            if self.stop_event.is_set():
                return 0
            self.on_start()
            self.ready.set()
            self._up.set(1)
            self._loop()
            return 0
        except KeyboardInterrupt:
            logger.warning("%s interrupted", self.config.service_id)
            return 130
        finally:
            self._up.set(0)
            try:
                self.on_stop()
            finally:
                server.stop()
                remove_pid_file(pidfile)
                logger.info("%s stopped", self.config.service_id)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                did_work = self.step()
            except NodeError as exc:
                self._steps.labels(outcome="error").inc()
                retryable = isinstance(exc, RetryableError)
                logger.warning("step failed (%s): %s", type(exc).__name__, exc)
                self.wait(self.config.error_interval if retryable else self.config.idle_interval)
                continue
            except Exception as exc:
                self._steps.labels(outcome="error").inc()
                error = classify(exc)
                if isinstance(error, RetryableError):
                    logger.warning("step failed, will retry: %s", error)
                else:
                    logger.exception("step failed unexpectedly: %s", error)
                self.wait(self.config.error_interval)
                continue
            self._steps.labels(outcome="work" if did_work else "idle").inc()
            if not did_work:
                self.wait(self.config.idle_interval)


def run_with_logging(service: RoleService, *, level: int = logging.INFO) -> int:
    """Run `service` with JSON logs in `$R3MES_HOME/logs/<role>-<name>.log`; exit code."""
    from r3mes.node.runtime.jsonlog import configure_service_logging

    config = service.config
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    handler = configure_service_logging(
        config.home.logs / f"{config.service_id}.log",
        role=config.role,
        name=config.name,
        level=level,
    )
    try:
        return service.run()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
