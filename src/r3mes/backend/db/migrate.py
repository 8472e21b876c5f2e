"""Apply the Alembic migrations shipped inside the package (`r3mes backend migrate`).

Each concern has its own branch of revisions in `db/migrations/versions/` (accounts, chat,
index); `upgrade heads` applies them all. No `alembic.ini` is needed: the config is built here.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from r3mes.backend.db.engine import Database

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


MIGRATION_LOCK_ID = 0x52334D4553  # "R3MES": one migrator at a time on PostgreSQL


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")


def _pending(connection: Connection) -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    current = list(MigrationContext.configure(connection).get_current_heads())
    # A revision another branch `depends_on` leaves the version table once that branch is
    # applied, so "applied" is everything below the current heads, dependencies included.
    applied = (
        {r.revision for r in script.iterate_revisions(tuple(current), "base")} if current else set()
    )
    return sorted(set(script.get_heads()) - applied)


async def migrate(db: Database) -> None:
    """Bring the database to the newest schema (idempotent; safe with concurrent starters)."""
    async with db.engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def pending_heads(db: Database) -> list[str]:
    """Branch heads not yet applied (empty when the schema is current)."""
    async with db.read_engine.connect() as connection:
        return await connection.run_sync(_pending)
