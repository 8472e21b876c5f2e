"""Explorer index tables (ix_*): blocks, txs, accounts, nodes, rounds, submissions,
attestations, rewards, slashes, artifacts, adapter versions and daily totals.

Revision ID: index_0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "index_0001"
down_revision = None
branch_labels = ("index",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ix_accounts",
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("pubkey", sa.String(length=132), nullable=False),
        sa.Column("reputation", sa.BigInteger(), nullable=False),
        sa.Column("earned", sa.BigInteger(), nullable=False),
        sa.Column("slashed", sa.BigInteger(), nullable=False),
        sa.Column("roles", sa.String(length=64), nullable=False),
        sa.Column("is_miner", sa.Boolean(), nullable=False),
        sa.Column("is_validator", sa.Boolean(), nullable=False),
        sa.Column("first_height", sa.BigInteger(), nullable=False),
        sa.Column("submissions", sa.BigInteger(), nullable=False),
        sa.Column("verified", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("attestations", sa.BigInteger(), nullable=False),
        sa.Column("attest_settled", sa.BigInteger(), nullable=False),
        sa.Column("attest_agreed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_ix_accounts")),
    )
    op.create_index(
        "ix_accounts_miner_rank",
        "ix_accounts",
        ["is_miner", "reputation", "earned", "address"],
        unique=False,
    )
    op.create_index(
        "ix_accounts_validator_rank",
        "ix_accounts",
        ["is_validator", "attest_agreed", "address"],
        unique=False,
    )
    op.create_table(
        "ix_adapter_versions",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("parent_version", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("proposer", sa.String(length=96), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(length=64), nullable=False),
        sa.Column("submission_ids", sa.Text(), nullable=False),
        sa.Column("heldout_loss", sa.Float(), nullable=True),
        sa.Column("base_loss", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_ix_adapter_versions")),
    )
    op.create_table(
        "ix_artifacts",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("artifact_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("base_model_id", sa.String(length=128), nullable=False),
        sa.Column("base_model_version", sa.BigInteger(), nullable=False),
        sa.Column("target_modules", sa.Text(), nullable=False),
        sa.Column("rank", sa.BigInteger(), nullable=False),
        sa.Column("hf_repo", sa.String(length=256), nullable=False),
        sa.Column("hf_revision", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("registered_by", sa.String(length=96), nullable=False),
        sa.Column("registered_height", sa.BigInteger(), nullable=False),
        sa.Column("approved_height", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_ix_artifacts")),
    )
    op.create_table(
        "ix_attestations",
        sa.Column("submission_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("validator", sa.String(length=96), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=8), nullable=False),
        sa.Column("distance_ppm", sa.BigInteger(), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("agreed", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("submission_id", "validator", name=op.f("pk_ix_attestations")),
    )
    op.create_index(
        "ix_attestations_validator", "ix_attestations", ["validator", "round"], unique=False
    )
    op.create_table(
        "ix_blocks",
        sa.Column("height", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("proposer", sa.String(length=96), nullable=False),
        sa.Column("app_hash", sa.String(length=64), nullable=False),
        sa.Column("num_txs", sa.Integer(), nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("height", name=op.f("pk_ix_blocks")),
        sa.UniqueConstraint("hash", name=op.f("uq_ix_blocks_hash")),
    )
    op.create_index(op.f("ix_ix_blocks_time"), "ix_blocks", ["time"], unique=False)
    op.create_table(
        "ix_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("blocks", sa.BigInteger(), nullable=False),
        sa.Column("txs", sa.BigInteger(), nullable=False),
        sa.Column("submissions", sa.BigInteger(), nullable=False),
        sa.Column("verified", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("rewards", sa.BigInteger(), nullable=False),
        sa.Column("slashes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_ix_daily")),
    )
    op.create_table(
        "ix_faucet_grants",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tx_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_faucet_grants")),
    )
    op.create_index(
        "ix_faucet_grants_address", "ix_faucet_grants", ["address", "created_at_ms"], unique=False
    )
    op.create_index(
        "ix_faucet_grants_ip", "ix_faucet_grants", ["ip", "created_at_ms"], unique=False
    )
    op.create_table(
        "ix_meta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.String(length=64), nullable=False),
        sa.Column("genesis_hash", sa.String(length=64), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("supply", sa.BigInteger(), nullable=False),
        sa.Column("minted", sa.BigInteger(), nullable=False),
        sa.Column("burned", sa.BigInteger(), nullable=False),
        sa.Column("next_account_number", sa.BigInteger(), nullable=False),
        sa.Column("active_model", sa.String(length=300), nullable=False),
        sa.Column("active_dataset", sa.String(length=300), nullable=False),
        sa.Column("active_adapter", sa.String(length=300), nullable=False),
        sa.Column("last_block_time_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_meta")),
    )
    op.create_table(
        "ix_node_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=300), nullable=False),
        sa.Column("stake", sa.BigInteger(), nullable=False),
        sa.Column("adapter_version", sa.BigInteger(), nullable=False),
        sa.Column("capacity", sa.BigInteger(), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_node_events")),
    )
    op.create_index(op.f("ix_ix_node_events_height"), "ix_node_events", ["height"], unique=False)
    op.create_index("ix_node_events_address", "ix_node_events", ["address", "id"], unique=False)
    op.create_table(
        "ix_nodes",
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("endpoint", sa.String(length=300), nullable=False),
        sa.Column("stake", sa.BigInteger(), nullable=False),
        sa.Column("registered_height", sa.BigInteger(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("last_heartbeat_ms", sa.BigInteger(), nullable=False),
        sa.Column("adapter_version", sa.BigInteger(), nullable=False),
        sa.Column("capacity", sa.BigInteger(), nullable=False),
        sa.Column("heartbeats", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("role", "address", name=op.f("pk_ix_nodes")),
    )
    op.create_table(
        "ix_rewards",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reputation", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("submission_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_rewards")),
    )
    op.create_index(op.f("ix_ix_rewards_height"), "ix_rewards", ["height"], unique=False)
    op.create_index("ix_rewards_address", "ix_rewards", ["address", "id"], unique=False)
    op.create_table(
        "ix_rounds",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("open_height", sa.BigInteger(), nullable=False),
        sa.Column("close_height", sa.BigInteger(), nullable=False),
        sa.Column("seed", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("base_model_id", sa.String(length=128), nullable=False),
        sa.Column("base_model_version", sa.BigInteger(), nullable=False),
        sa.Column("base_model_cid", sa.String(length=128), nullable=False),
        sa.Column("dataset_id", sa.String(length=128), nullable=False),
        sa.Column("dataset_version", sa.BigInteger(), nullable=False),
        sa.Column("dataset_cid", sa.String(length=128), nullable=False),
        sa.Column("adapter_version", sa.BigInteger(), nullable=False),
        sa.Column("adapter_cid", sa.String(length=128), nullable=False),
        sa.Column("proposed_version", sa.BigInteger(), nullable=False),
        sa.Column("submissions", sa.BigInteger(), nullable=False),
        sa.Column("verified", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_ix_rounds")),
    )
    op.create_table(
        "ix_slashes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("submission_id", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("burned", sa.BigInteger(), nullable=False),
        sa.Column("reputation_lost", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_slashes")),
    )
    op.create_index(op.f("ix_ix_slashes_height"), "ix_slashes", ["height"], unique=False)
    op.create_index("ix_slashes_address", "ix_slashes", ["address", "id"], unique=False)
    op.create_table(
        "ix_submissions",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("shard", sa.BigInteger(), nullable=False),
        sa.Column("miner", sa.String(length=96), nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("settled_height", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(length=64), nullable=False),
        sa.Column("merged_version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ix_submissions")),
    )
    op.create_index("ix_submissions_miner", "ix_submissions", ["miner", "id"], unique=False)
    op.create_index(
        "ix_submissions_miner_round", "ix_submissions", ["miner", "round"], unique=False
    )
    op.create_index("ix_submissions_round", "ix_submissions", ["round", "id"], unique=False)
    op.create_index("ix_submissions_status", "ix_submissions", ["status", "id"], unique=False)
    op.create_table(
        "ix_tx_addresses",
        sa.Column("address", sa.String(length=96), nullable=False),
        sa.Column("height", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("address", "height", "index", name=op.f("pk_ix_tx_addresses")),
    )
    op.create_table(
        "ix_txs",
        sa.Column("height", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("signer", sa.String(length=96), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("log", sa.Text(), nullable=False),
        sa.Column("msg_types", sa.String(length=512), nullable=False),
        sa.Column("msgs", sa.Text(), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("height", "index", name=op.f("pk_ix_txs")),
    )
    op.create_index(op.f("ix_ix_txs_hash"), "ix_txs", ["hash"], unique=False)


def downgrade() -> None:
    op.drop_table("ix_faucet_grants")
    op.drop_table("ix_daily")
    op.drop_table("ix_adapter_versions")
    op.drop_table("ix_artifacts")
    op.drop_table("ix_slashes")
    op.drop_table("ix_rewards")
    op.drop_table("ix_attestations")
    op.drop_table("ix_submissions")
    op.drop_table("ix_rounds")
    op.drop_table("ix_node_events")
    op.drop_table("ix_nodes")
    op.drop_table("ix_accounts")
    op.drop_table("ix_tx_addresses")
    op.drop_table("ix_txs")
    op.drop_table("ix_blocks")
    op.drop_table("ix_meta")
