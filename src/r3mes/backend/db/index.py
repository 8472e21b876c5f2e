"""The explorer's index of the ledger (`ix_*` tables), written only by the indexer.

One row per ledger record (account, node, round, submission, artifact) kept equal to the
ledger's state at `ix_meta.height`, plus append-only history the ledger does not keep
(blocks, txs by hash and by address, attestations, rewards, slashes, node events, adapter
versions and their lineage) and per-day totals for analytics. Amounts are integer credits;
heights are 64-bit.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy import text as sa_text
from sqlalchemy.orm import Mapped, mapped_column

from r3mes.backend.db.base import Base, BigId

Addr = String(96)
Hash = String(64)


class IxMeta(Base):
    """The scalars of the indexed state (one row, id=1)."""

    __tablename__ = "ix_meta"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[str] = mapped_column(String(64))
    genesis_hash: Mapped[str] = mapped_column(Hash)
    height: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[str] = mapped_column(Text)
    """The ledger params as JSON (fixed by genesis)."""
    supply: Mapped[int] = mapped_column(BigInteger)
    minted: Mapped[int] = mapped_column(BigInteger)
    burned: Mapped[int] = mapped_column(BigInteger)
    next_account_number: Mapped[int] = mapped_column(BigInteger)
    active_model: Mapped[str] = mapped_column(String(300), default="")
    active_dataset: Mapped[str] = mapped_column(String(300), default="")
    active_adapter: Mapped[str] = mapped_column(String(300), default="")
    last_block_time_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class IxBlock(Base):
    __tablename__ = "ix_blocks"
    height: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(Hash, unique=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    time_ms: Mapped[int] = mapped_column(BigInteger)
    proposer: Mapped[str] = mapped_column(Addr, default="")
    app_hash: Mapped[str] = mapped_column(Hash)
    """The header's app hash (the state after the previous block, CometBFT's convention)."""
    num_txs: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(BigInteger)


class IxTx(Base):
    __tablename__ = "ix_txs"
    height: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(Hash, index=True)
    signer: Mapped[str] = mapped_column(Addr, default="")
    sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    code: Mapped[int] = mapped_column(Integer)
    log: Mapped[str] = mapped_column(Text, default="")
    msg_types: Mapped[str] = mapped_column(String(512), default="")
    msgs: Mapped[str] = mapped_column(Text, default="[]")
    """The decoded messages as JSON (empty when the bytes did not decode)."""
    memo: Mapped[str] = mapped_column(Text, default="")
    events: Mapped[str] = mapped_column(Text, default="[]")
    time_ms: Mapped[int] = mapped_column(BigInteger)


class IxTxAddress(Base):
    """Which txs touch an address (as signer or recipient), newest first by (height, index)."""

    __tablename__ = "ix_tx_addresses"
    address: Mapped[str] = mapped_column(Addr, primary_key=True)
    height: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    role: Mapped[str] = mapped_column(String(16))


class IxAccount(Base):
    __tablename__ = "ix_accounts"
    address: Mapped[str] = mapped_column(Addr, primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    pubkey: Mapped[str] = mapped_column(String(132), default="")
    reputation: Mapped[int] = mapped_column(BigInteger, default=0)
    earned: Mapped[int] = mapped_column(BigInteger, default=0)
    slashed: Mapped[int] = mapped_column(BigInteger, default=0)
    roles: Mapped[str] = mapped_column(String(64), default="")
    """Comma-separated sorted roles (miner, proposer, serving, validator)."""
    is_miner: Mapped[bool] = mapped_column(Boolean, default=False)
    is_validator: Mapped[bool] = mapped_column(Boolean, default=False)
    first_height: Mapped[int] = mapped_column(BigInteger, default=0)
    submissions: Mapped[int] = mapped_column(BigInteger, default=0)
    verified: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    attestations: Mapped[int] = mapped_column(BigInteger, default=0)
    attest_settled: Mapped[int] = mapped_column(BigInteger, default=0)
    """Attestations on submissions that have since settled."""
    attest_agreed: Mapped[int] = mapped_column(BigInteger, default=0)
    """... of which agreed with the final verdict."""

    __table_args__ = (
        # The leaderboards' ORDER BY exactly (mixed directions), so a page is an index walk.
        Index(
            "ix_accounts_miner_rank",
            "is_miner",
            sa_text("reputation DESC"),
            sa_text("earned DESC"),
            "address",
        ),
        Index(
            "ix_accounts_validator_rank", "is_validator", sa_text("attest_agreed DESC"), "address"
        ),
    )


class IxNode(Base):
    __tablename__ = "ix_nodes"
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    address: Mapped[str] = mapped_column(Addr, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(300), default="")
    stake: Mapped[int] = mapped_column(BigInteger, default=0)
    registered_height: Mapped[int] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_heartbeat_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    adapter_version: Mapped[int] = mapped_column(BigInteger, default=0)
    capacity: Mapped[int] = mapped_column(BigInteger, default=0)
    heartbeats: Mapped[int] = mapped_column(BigInteger, default=0)


class IxNodeEvent(Base):
    """Registrations, heartbeats and staleness of nodes, in ledger order."""

    __tablename__ = "ix_node_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    height: Mapped[int] = mapped_column(BigInteger, index=True)
    address: Mapped[str] = mapped_column(Addr)
    role: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    """register | heartbeat | stale"""
    endpoint: Mapped[str] = mapped_column(String(300), default="")
    stake: Mapped[int] = mapped_column(BigInteger, default=0)
    adapter_version: Mapped[int] = mapped_column(BigInteger, default=0)
    capacity: Mapped[int] = mapped_column(BigInteger, default=0)
    time_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_node_events_address", "address", "id"),)


class IxRound(Base):
    __tablename__ = "ix_rounds"
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    open_height: Mapped[int] = mapped_column(BigInteger)
    close_height: Mapped[int] = mapped_column(BigInteger)
    seed: Mapped[str] = mapped_column(Hash)
    status: Mapped[str] = mapped_column(String(16), default="open")
    base_model_id: Mapped[str] = mapped_column(String(128), default="")
    base_model_version: Mapped[int] = mapped_column(BigInteger, default=0)
    base_model_cid: Mapped[str] = mapped_column(String(128), default="")
    dataset_id: Mapped[str] = mapped_column(String(128), default="")
    dataset_version: Mapped[int] = mapped_column(BigInteger, default=0)
    dataset_cid: Mapped[str] = mapped_column(String(128), default="")
    adapter_version: Mapped[int] = mapped_column(BigInteger, default=0)
    adapter_cid: Mapped[str] = mapped_column(String(128), default="")
    proposed_version: Mapped[int] = mapped_column(BigInteger, default=0)
    submissions: Mapped[int] = mapped_column(BigInteger, default=0)
    verified: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    first_submission_id: Mapped[int] = mapped_column(BigInteger, default=0)
    """Id the round's first submission got or will get (the ledger's Round field)."""


class IxSubmission(Base):
    __tablename__ = "ix_submissions"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    round: Mapped[int] = mapped_column(BigInteger)
    shard: Mapped[int] = mapped_column(BigInteger)
    miner: Mapped[str] = mapped_column(Addr)
    cid: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(Hash)
    height: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    settled_height: Mapped[int] = mapped_column(BigInteger, default=0)
    tx_hash: Mapped[str] = mapped_column(Hash, default="")
    merged_version: Mapped[int] = mapped_column(BigInteger, default=0)
    """The adapter version this submission was merged into (0: none yet)."""
    residual_cid: Mapped[str] = mapped_column(String(128), default="")
    residual_digest: Mapped[str] = mapped_column(String(64), default="")
    base_submission_id: Mapped[int] = mapped_column(BigInteger, default=0)
    trace_cid: Mapped[str] = mapped_column(String(128), default="")
    trace_root: Mapped[str] = mapped_column(String(64), default="")
    assigned: Mapped[str] = mapped_column(Text, default="[]")
    """The validators the ledger assigned to judge it, a sorted JSON list."""

    __table_args__ = (
        Index("ix_submissions_round", "round", "id"),
        Index("ix_submissions_miner", "miner", "id"),
        Index("ix_submissions_miner_round", "miner", "round"),
        Index("ix_submissions_status", "status", "id"),
    )


class IxAttestation(Base):
    __tablename__ = "ix_attestations"
    submission_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    validator: Mapped[str] = mapped_column(Addr, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    """Order among the submission's attestations (the ledger keeps them in order)."""
    verdict: Mapped[str] = mapped_column(String(8))
    distance_ppm: Mapped[int] = mapped_column(BigInteger)
    height: Mapped[int] = mapped_column(BigInteger)
    round: Mapped[int] = mapped_column(BigInteger)
    agreed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    """Whether this verdict matched the submission's final status (None while pending)."""

    __table_args__ = (Index("ix_attestations_validator", "validator", "round"),)


class IxReward(Base):
    __tablename__ = "ix_rewards"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    height: Mapped[int] = mapped_column(BigInteger, index=True)
    address: Mapped[str] = mapped_column(Addr)
    kind: Mapped[str] = mapped_column(String(16))
    """miner | validator | proposer"""
    amount: Mapped[int] = mapped_column(BigInteger)
    reputation: Mapped[int] = mapped_column(BigInteger)
    round: Mapped[int] = mapped_column(BigInteger)
    submission_id: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_rewards_address", "address", "id"),)


class IxSlash(Base):
    __tablename__ = "ix_slashes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    height: Mapped[int] = mapped_column(BigInteger, index=True)
    address: Mapped[str] = mapped_column(Addr)
    submission_id: Mapped[int] = mapped_column(BigInteger)
    round: Mapped[int] = mapped_column(BigInteger)
    burned: Mapped[int] = mapped_column(BigInteger)
    reputation_lost: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(16), default="rejected")
    """rejected (a quorum rejected the work) | overturned (a dispute proved it wrong) |
    dispute (lost a dispute) | proposal (a quorum rejected the proposed adapter)"""

    __table_args__ = (Index("ix_slashes_address", "address", "id"),)


class IxProposal(Base):
    """An adapter version proposed for a round (checked merge): approved only when a quorum
    of its assigned validators accepts it. A round may see several (after a rejection)."""

    __tablename__ = "ix_proposals"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    round: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger)
    parent_version: Mapped[int] = mapped_column(BigInteger)
    proposer: Mapped[str] = mapped_column(Addr)
    cid: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(Hash)
    size: Mapped[int] = mapped_column(BigInteger)
    spec: Mapped[str] = mapped_column(Text)
    """The adapter's ArtifactSpec as JSON (what an approval registers)."""
    submission_ids: Mapped[str] = mapped_column(Text)
    assigned: Mapped[str] = mapped_column(Text, default="[]")
    height: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(Hash, default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """pending | approved | rejected | stale (the ledger's ProposalStatus)"""
    decided_height: Mapped[int] = mapped_column(BigInteger, default=0)
    burned: Mapped[int] = mapped_column(BigInteger, default=0)
    """Proposer stake burned when a quorum rejected it."""

    __table_args__ = (Index("ix_proposals_round", "round", "id"),)


class IxProposalAttestation(Base):
    __tablename__ = "ix_proposal_attestations"
    proposal_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    validator: Mapped[str] = mapped_column(Addr, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(8))
    height: Mapped[int] = mapped_column(BigInteger)


class IxDispute(Base):
    """A dispute over one submission (its id is the submission's), bisection to outcome."""

    __tablename__ = "ix_disputes"
    submission_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    round: Mapped[int] = mapped_column(BigInteger)
    miner: Mapped[str] = mapped_column(Addr)
    claimant: Mapped[str] = mapped_column(Addr)
    respondent: Mapped[str] = mapped_column(Addr)
    opener: Mapped[str] = mapped_column(Addr)
    steps: Mapped[int] = mapped_column(BigInteger)
    lo: Mapped[int] = mapped_column(BigInteger, default=0)
    hi: Mapped[int] = mapped_column(BigInteger)
    rounds: Mapped[int] = mapped_column(BigInteger, default=0)
    """Halvings so far (the dispute's message rounds)."""
    status: Mapped[str] = mapped_column(String(16), default="bisecting")
    """bisecting | refereeing | resolved (the ledger's DisputeStatus)"""
    referees: Mapped[str] = mapped_column(Text, default="[]")
    lo_cid: Mapped[str] = mapped_column(String(128), default="")
    votes: Mapped[int] = mapped_column(Integer, default=0)
    winner: Mapped[str] = mapped_column(String(16), default="")
    """claimant | respondent | neither | none ("" while open)"""
    loser: Mapped[str] = mapped_column(Addr, default="")
    burned: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str] = mapped_column(String(64), default="")
    opened_height: Mapped[int] = mapped_column(BigInteger)
    resolved_height: Mapped[int] = mapped_column(BigInteger, default=0)
    tx_hash: Mapped[str] = mapped_column(Hash, default="")

    __table_args__ = (
        Index("ix_disputes_claimant", "claimant", "submission_id"),
        Index("ix_disputes_respondent", "respondent", "submission_id"),
    )


class IxUnbonding(Base):
    """Stake moved out by `Unbond`: slashable until withdrawn at/after `release_height`."""

    __tablename__ = "ix_unbonding"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(Addr)
    role: Mapped[str] = mapped_column(String(16))
    unbonded: Mapped[int] = mapped_column(BigInteger)
    """The amount `Unbond` moved."""
    amount: Mapped[int] = mapped_column(BigInteger)
    """What is left of it (slashing takes from it, newest first)."""
    release_height: Mapped[int] = mapped_column(BigInteger)
    height: Mapped[int] = mapped_column(BigInteger)
    withdrawn_height: Mapped[int] = mapped_column(BigInteger, default=0)
    """Height of the `Withdraw` that paid it out (0: still unbonding)."""

    __table_args__ = (Index("ix_unbonding_address", "address", "id"),)


class IxValidatorPenalty(Base):
    """A validator's reputation lost at the end of a submission's attestation window."""

    __tablename__ = "ix_validator_penalties"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    height: Mapped[int] = mapped_column(BigInteger, index=True)
    address: Mapped[str] = mapped_column(Addr)
    submission_id: Mapped[int] = mapped_column(BigInteger)
    round: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(16))
    """missed | disagreed"""
    reputation_lost: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_validator_penalties_address", "address", "id"),)


class IxArtifact(Base):
    __tablename__ = "ix_artifacts"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    """`kind/id/version` with the version zero-padded (the ledger's key; sorts like it)."""
    kind: Mapped[str] = mapped_column(String(16))
    artifact_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(BigInteger)
    cid: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(Hash)
    size: Mapped[int] = mapped_column(BigInteger)
    base_model_id: Mapped[str] = mapped_column(String(128), default="")
    base_model_version: Mapped[int] = mapped_column(BigInteger, default=0)
    target_modules: Mapped[str] = mapped_column(Text, default="[]")
    rank: Mapped[int] = mapped_column(BigInteger, default=0)
    hf_repo: Mapped[str] = mapped_column(String(256), default="")
    hf_revision: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[str] = mapped_column(String(16))
    registered_by: Mapped[str] = mapped_column(Addr, default="")
    registered_height: Mapped[int] = mapped_column(BigInteger, default=0)
    approved_height: Mapped[int] = mapped_column(BigInteger, default=0)


class IxAdapterVersion(Base):
    __tablename__ = "ix_adapter_versions"
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    parent_version: Mapped[int] = mapped_column(BigInteger)
    round: Mapped[int] = mapped_column(BigInteger)
    cid: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(Hash)
    size: Mapped[int] = mapped_column(BigInteger)
    proposer: Mapped[str] = mapped_column(Addr)
    height: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(Hash)
    submission_ids: Mapped[str] = mapped_column(Text)
    """The submissions merged into this version, as a JSON list (the lineage)."""
    heldout_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Held-out loss the proposer measured for this version (its /stats); None if unknown."""
    base_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    """... and for the base model without any adapter, on the same held-out data."""


class IxDaily(Base):
    """Network totals per UTC day (analytics reads these instead of scanning history)."""

    __tablename__ = "ix_daily"
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    blocks: Mapped[int] = mapped_column(BigInteger, default=0)
    txs: Mapped[int] = mapped_column(BigInteger, default=0)
    submissions: Mapped[int] = mapped_column(BigInteger, default=0)
    verified: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    rewards: Mapped[int] = mapped_column(BigInteger, default=0)
    slashes: Mapped[int] = mapped_column(BigInteger, default=0)
    """Stake burned by slashing that day."""


INDEX_TABLES = [
    IxMeta,
    IxBlock,
    IxTx,
    IxTxAddress,
    IxAccount,
    IxNode,
    IxNodeEvent,
    IxRound,
    IxSubmission,
    IxAttestation,
    IxReward,
    IxSlash,
    IxArtifact,
    IxAdapterVersion,
    IxDaily,
    IxProposal,
    IxProposalAttestation,
    IxDispute,
    IxUnbonding,
    IxValidatorPenalty,
]


class IxFaucetGrant(Base):
    """Each faucet payout (and its cooldown evidence): who asked, from where, what was sent."""

    __tablename__ = "ix_faucet_grants"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(Addr)
    ip: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    """pending (being sent) | sent | failed (a failed send does not count for cooldowns)"""
    tx_hash: Mapped[str] = mapped_column(Hash, default="")
    created_at_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_faucet_grants_address", "address", "created_at_ms"),
        Index("ix_faucet_grants_ip", "ip", "created_at_ms"),
    )


INDEX_TABLES.append(IxFaucetGrant)


class IxChatDaily(Base):
    """Paid chat per UTC day and model, rolled up from the gateway's `chat_requests`."""

    __tablename__ = "ix_chat_daily"
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(160), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    credits: Mapped[int] = mapped_column(BigInteger, default=0)
    active_users: Mapped[int] = mapped_column(BigInteger, default=0)
    """Distinct accounts that day on that model (kept exact through `IxChatUser`)."""


class IxChatUser(Base):
    """Which accounts used which model on which day (the set behind `active_users`)."""

    __tablename__ = "ix_chat_users"
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(160), primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class IxChatUserLast(Base):
    """Each chat user's last active day (counts active users over any window cheaply)."""

    __tablename__ = "ix_chat_user_last"
    account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_day: Mapped[dt.date] = mapped_column(Date, index=True)


class IxChatRollup(Base):
    """How far the chat rollup has read `chat_requests` (one row, id=1)."""

    __tablename__ = "ix_chat_rollup"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)


class IxChatNode(Base):
    """Paid chat each serving node (operator address) has answered successfully, in all."""

    __tablename__ = "ix_chat_nodes"
    node: Mapped[str] = mapped_column(String(128), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    credits: Mapped[int] = mapped_column(BigInteger, default=0)


CHAT_TABLES = [IxChatDaily, IxChatUser, IxChatUserLast, IxChatRollup, IxChatNode]
