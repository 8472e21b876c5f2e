"""The migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, inspect, update
from sqlalchemy.exc import IntegrityError

from r3mes.backend.db.accounts import Account
from r3mes.backend.db.engine import Database
from r3mes.backend.db.migrate import migrate
from r3mes.backend.db.models import Base
from r3mes.backend.services.credits import utcnow
from r3mes.backend.settings import BackendSettings

pytestmark = pytest.mark.anyio


def _expression_indexes() -> set[str]:
    """Indexes with an expression (e.g. `reputation DESC`): alembic cannot compare those and
    reports each as removed and re-added; they are checked by name instead."""
    return {
        str(index.name)
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if any(not isinstance(e, Column) for e in index.expressions)
    }


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "compare_server_default": False,
            "target_metadata": Base.metadata,
        },
    )
    skip = _expression_indexes()
    present = {
        str(index["name"])
        for table in inspect(connection).get_table_names()
        for index in inspect(connection).get_indexes(table)
    }
    missing = skip - present
    diff = [
        d
        for d in compare_metadata(context, Base.metadata)
        if not (d[0] in ("add_index", "remove_index") and str(d[1].name) in skip)
    ]
    return diff + [("missing expression index", name) for name in sorted(missing)]


async def test_migrated_schema_equals_the_models(settings: BackendSettings) -> None:
    db = Database(settings)
    try:
        await migrate(db)
        async with db.engine.connect() as connection:
            diff = await connection.run_sync(_differences)
    finally:
        await db.dispose()
    assert diff == [], f"migrations and models differ: {diff}"


async def test_the_database_refuses_a_negative_balance(settings: BackendSettings) -> None:
    """Even a write that bypasses the ledger service cannot take an account below zero."""
    db = Database(settings)
    try:
        await migrate(db)
        async with db.write() as s, s.begin():
            s.add(Account(address="remes1x", created_at=utcnow()))
        for column in ("available", "held"):
            with pytest.raises(IntegrityError):
                async with db.write() as s, s.begin():
                    await s.execute(update(Account).values({column: -1}))
    finally:
        await db.dispose()
