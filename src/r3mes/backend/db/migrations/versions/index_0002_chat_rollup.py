"""Explorer chat rollup: per day and model totals, the distinct-user sets behind them, each
user's last active day, and the rollup's read position in chat_requests.

Revision ID: index_0002
Revises: index_0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "index_0002"
down_revision = "index_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ix_chat_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(length=160), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("active_users", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "model", name=op.f("pk_ix_chat_daily")),
    )
    op.create_table(
        "ix_chat_rollup",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_chat_rollup")),
    )
    op.create_table(
        "ix_chat_user_last",
        sa.Column("account_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_ix_chat_user_last")),
    )
    op.create_index(
        op.f("ix_ix_chat_user_last_last_day"), "ix_chat_user_last", ["last_day"], unique=False
    )
    op.create_table(
        "ix_chat_users",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(length=160), nullable=False),
        sa.Column("account_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("day", "model", "account_id", name=op.f("pk_ix_chat_users")),
    )


def downgrade() -> None:
    op.drop_table("ix_chat_rollup")
    op.drop_table("ix_chat_user_last")
    op.drop_table("ix_chat_users")
    op.drop_table("ix_chat_daily")
