"""Networking helpers for tests that start real servers on 127.0.0.1."""

from __future__ import annotations

from r3mes.runtime.net import free_port

__all__ = ["free_port"]
