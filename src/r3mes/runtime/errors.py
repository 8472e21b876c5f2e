"""Errors of the process runtime (pid files, starting and stopping services)."""

from __future__ import annotations

from r3mes.errors import R3mesError


class ServiceError(R3mesError):
    """A service could not start, stop or be found (pid files, ports)."""
