"""Structured JSON logs for role services: one object per line.

Each line carries time, level, logger, message, the service's role and name, and any
`extra={...}` fields the caller passed. Secrets never go through here: callers log
addresses and CIDs, never keys or mnemonics.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a `LogRecord` as one compact JSON object."""

    def __init__(self, *, role: str, name: str) -> None:
        super().__init__()
        self.role = role
        self.name = name

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "role": self.role,
            "service": self.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_service_logging(
    path: Path, *, role: str, name: str, level: int = logging.INFO
) -> logging.Handler:
    """Send the root logger's records to `path` as JSON lines; returns the handler."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter(role=role, name=name))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
