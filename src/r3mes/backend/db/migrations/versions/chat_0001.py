"""chat: chat requests (usage per request), idempotent responses, operator payouts.

Revision ID: chat_0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "chat_0001"
down_revision = None
branch_labels = ("chat",)
depends_on = ("accounts_0001",)

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "chat_requests",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.BigInteger(), nullable=True),
        sa.Column("model", sa.String(length=160), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("payout_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_requests")),
        sa.UniqueConstraint("request_id", name=op.f("uq_chat_requests_request_id")),
    )
    for column in ("account_id", "node", "created_at", "payout_id"):
        op.create_index(op.f(f"ix_chat_requests_{column}"), "chat_requests", [column])
    op.create_table(
        "chat_idempotency",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_idempotency")),
        sa.UniqueConstraint("account_id", "key", name=op.f("uq_chat_idempotency_account_id")),
    )
    op.create_index(op.f("ix_chat_idempotency_created_at"), "chat_idempotency", ["created_at"])
    op.create_table(
        "chat_payouts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("gross", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("memo", sa.String(length=128), nullable=False),
        sa.Column("tx_hash", sa.String(length=64), nullable=True),
        sa.Column("height", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_payouts")),
        sa.UniqueConstraint("memo", name=op.f("uq_chat_payouts_memo")),
    )
    op.create_index(op.f("ix_chat_payouts_operator"), "chat_payouts", ["operator"])
    op.create_index(op.f("ix_chat_payouts_created_at"), "chat_payouts", ["created_at"])


def downgrade() -> None:
    op.drop_table("chat_payouts")
    op.drop_table("chat_idempotency")
    op.drop_table("chat_requests")
