"""The declarative base every backend table derives from.

Each concern keeps its tables in its own module (`db/accounts.py`, `db/chat.py`,
`db/index.py`) and its own Alembic branch (`db/migrations/versions/`); `db/models.py`
imports them all so `Base.metadata` is complete.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Integer, MetaData, Table
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Auto-increment 64-bit ids on PostgreSQL; SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def table_of(model: type[Base]) -> Table:
    """The Core `Table` of a mapped class (for statements built once and executed with
    parameters on a plain `Connection`, without the ORM's per-statement work)."""
    return cast(Table, model.__table__)
