"""Every backend table, imported in one place so `Base.metadata` is complete."""

from __future__ import annotations

from r3mes.backend.db import accounts, chat, index
from r3mes.backend.db.base import Base

__all__ = ["Base", "accounts", "chat", "index"]
