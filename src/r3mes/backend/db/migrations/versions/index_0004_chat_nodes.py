"""Explorer chat rollup per serving node (requests, tokens, credits answered in all).

Revision ID: index_0004
Revises: index_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "index_0004"
down_revision = "index_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ix_chat_nodes",
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("node", name=op.f("pk_ix_chat_nodes")),
    )


def downgrade() -> None:
    op.drop_table("ix_chat_nodes")
