"""Find, inspect and stop role services from any shell, through their pid files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from r3mes.node.errors import ServiceError
from r3mes.paths import Home
from r3mes.runtime.pidfile import PidInfo, list_services, stop_service

logger = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServiceStatus:
    """One pid file and what its service says about itself."""

    service_id: str
    info: PidInfo | None
    """None when the pid file is malformed."""
    alive: bool
    health: dict[str, Any] | None
    """`/health` of a live service, None when it did not answer in time."""


def _fetch_health(info: PidInfo) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{info.url}/health", timeout=STATUS_TIMEOUT_S)
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def service_statuses(home: Home, *, role: str | None = None) -> list[ServiceStatus]:
    """Every service with a pid file under `home.run` (optionally of one role)."""
    out: list[ServiceStatus] = []
    for path, info in list_services(home.run):
        sid = path.stem
        if role is not None and (info is None or info.role != role):
            continue
        alive = info is not None and info.alive()
        health = _fetch_health(info) if alive and info is not None else None
        out.append(ServiceStatus(service_id=sid, info=info, alive=alive, health=health))
    return out


def stop_services(
    home: Home, *, role: str | None = None, name: str | None = None, timeout: float = 30.0
) -> list[tuple[str, str]]:
    """SIGTERM matching services and wait; returns (service id, outcome) pairs.

    Outcomes: 'stopped', 'killed' (ignored SIGTERM for `timeout` s), 'stale' (pid file of a
    dead process, removed). Raises `ServiceError` when nothing matched.
    """
    results: list[tuple[str, str]] = []
    for path, info in list_services(home.run):
        if info is None:
            continue
        if (role is not None and info.role != role) or (name is not None and info.name != name):
            continue
        outcome = stop_service(path, timeout=timeout)
        logger.info("%s: %s", path.stem, outcome)
        results.append((path.stem, outcome))
    if not results:
        what = " ".join(x for x in (role, name) if x) or "service"
        raise ServiceError(f"no running {what} found under {home.run}")
    return results
