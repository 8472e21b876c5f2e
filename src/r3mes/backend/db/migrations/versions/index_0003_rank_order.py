"""Leaderboard indexes in the leaderboards' own order (reputation and earnings descending,
address ascending), so a page is an index walk instead of a sort of every miner.

Revision ID: index_0003
Revises: index_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "index_0003"
down_revision = "index_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_accounts_miner_rank", table_name="ix_accounts")
    op.drop_index("ix_accounts_validator_rank", table_name="ix_accounts")
    op.create_index(
        "ix_accounts_miner_rank",
        "ix_accounts",
        ["is_miner", sa.text("reputation DESC"), sa.text("earned DESC"), "address"],
    )
    op.create_index(
        "ix_accounts_validator_rank",
        "ix_accounts",
        ["is_validator", sa.text("attest_agreed DESC"), "address"],
    )


def downgrade() -> None:
    op.drop_index("ix_accounts_miner_rank", table_name="ix_accounts")
    op.drop_index("ix_accounts_validator_rank", table_name="ix_accounts")
    op.create_index(
        "ix_accounts_miner_rank", "ix_accounts", ["is_miner", "reputation", "earned", "address"]
    )
    op.create_index(
        "ix_accounts_validator_rank", "ix_accounts", ["is_validator", "attest_agreed", "address"]
    )
