"""Alembic environment: runs on the connection `db/migrate.py` passes in."""

from __future__ import annotations

from alembic import context

from r3mes.backend.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `r3mes backend migrate`, not the alembic command")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
