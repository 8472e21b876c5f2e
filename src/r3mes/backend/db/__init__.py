"""The data layer: SQLAlchemy 2 models, async sessions, Alembic migrations."""
