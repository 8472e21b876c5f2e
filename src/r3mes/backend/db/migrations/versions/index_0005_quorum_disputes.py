"""Explorer index for the quorum ledger (issue 17): submissions' residual/trace commitments
and assigned validators, rounds' first submission id, slash reasons, and the new records:
adapter proposals with their attestations, disputes, unbonding stake, validator penalties.

Revision ID: index_0005
Revises: index_0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "index_0005"
down_revision = "index_0004"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _add(table: str, name: str, type_: sa.types.TypeEngine[Any], default: str) -> None:
    op.add_column(table, sa.Column(name, type_, nullable=False, server_default=sa.text(default)))


def upgrade() -> None:
    _add("ix_rounds", "first_submission_id", sa.BigInteger(), "0")
    _add("ix_submissions", "residual_cid", sa.String(length=128), "''")
    _add("ix_submissions", "residual_digest", sa.String(length=64), "''")
    _add("ix_submissions", "base_submission_id", sa.BigInteger(), "0")
    _add("ix_submissions", "trace_cid", sa.String(length=128), "''")
    _add("ix_submissions", "trace_root", sa.String(length=64), "''")
    _add("ix_submissions", "assigned", sa.Text(), "'[]'")
    _add("ix_slashes", "reason", sa.String(length=16), "'rejected'")
    op.create_table(
        "ix_proposals",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("parent_version", sa.BigInteger(), nullable=False),
        sa.Column("proposer", sa.String(length=96), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("submission_ids", sa.Text(), nullable=False),
        sa.Column("assigned", sa.Text(), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_height", sa.BigInteger(), nullable=False),
        sa.Column("burned", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_proposals")),
    )
    op.create_index("ix_proposals_round", "ix_proposals", ["round", "id"], unique=False)
    op.create_table(
        "ix_proposal_attestations",
        sa.Column("proposal_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("validator", sa.String(length=96), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=8), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "proposal_id", "validator", name=op.f("pk_ix_proposal_attestations")
        ),
    )
    op.create_table(
        "ix_disputes",
        sa.Column("submission_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("miner", sa.String(length=96), nullable=False),
        sa.Column("claimant", sa.String(length=96), nullable=False),
        sa.Column("respondent", sa.String(length=96), nullable=False),
        sa.Column("opener", sa.String(length=96), nullable=False),
        sa.Column("steps", sa.BigInteger(), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("rounds", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("referees", sa.Text(), nullable=False),
        sa.Column("lo_cid", sa.String(length=128), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("winner", sa.String(length=16), nullable=False),
        sa.Column("loser", sa.String(length=96), nullable=False),
        sa.Column("burned", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("opened_height", sa.BigInteger(), nullable=False),
        sa.Column("resolved_height", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("submission_id", name=op.f("pk_ix_disputes")),
    )
    op.create_index(
        "ix_disputes_claimant", "ix_disputes", ["claimant", "submission_id"], unique=False
    )
    op.create_index(
        "ix_disputes_respondent", "ix_disputes", ["respondent", "submission_id"], unique=False
    )
    op.create_table(
        "ix_unbonding",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("unbonded", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("release_height", sa.BigInteger(), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("withdrawn_height", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_unbonding")),
    )
    op.create_index("ix_unbonding_address", "ix_unbonding", ["address", "id"], unique=False)
    op.create_table(
        "ix_validator_penalties",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("submission_id", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("reputation_lost", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_validator_penalties")),
    )
    op.create_index(
        op.f("ix_ix_validator_penalties_height"),
        "ix_validator_penalties",
        ["height"],
        unique=False,
    )
    op.create_index(
        "ix_validator_penalties_address", "ix_validator_penalties", ["address", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("ix_validator_penalties")
    op.drop_table("ix_unbonding")
    op.drop_table("ix_disputes")
    op.drop_table("ix_proposal_attestations")
    op.drop_table("ix_proposals")
    for table, column in (
        ("ix_slashes", "reason"),
        ("ix_submissions", "assigned"),
        ("ix_submissions", "trace_root"),
        ("ix_submissions", "trace_cid"),
        ("ix_submissions", "base_submission_id"),
        ("ix_submissions", "residual_digest"),
        ("ix_submissions", "residual_cid"),
        ("ix_rounds", "first_submission_id"),
    ):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
