"""Paid chat tables: one row per chat request, stored idempotent responses, operator payouts.

`chat_requests` is also read by the explorer's analytics (per day and model), so its columns
are a contract (docs/backend.md). Amounts are integer credits.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from r3mes.backend.db.base import Base, BigId


class ChatRequest(Base):
    """One chat or text completion: who asked, which node served, what it cost."""

    __tablename__ = "chat_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(BigInteger, index=True)
    key_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    model: Mapped[str] = mapped_column(String(160))
    node: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    """Operator address of the serving node (None: no node answered, or a static node)."""
    status: Mapped[str] = mapped_column(String(16))
    """ok | error | cancelled"""
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    credits: Mapped[int] = mapped_column(BigInteger, default=0)
    """Credits captured for this request."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    payout_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    """The payout that paid the operator's share of `credits` (None: not yet paid)."""


class ChatIdempotency(Base):
    """A non-streamed request sent with `Idempotency-Key`, and its stored answer."""

    __tablename__ = "chat_idempotency"
    __table_args__ = (UniqueConstraint("account_id", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """None while the first request is still running."""
    body: Mapped[str] = mapped_column(Text, default="")
    headers: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ChatPayout(Base):
    """One transfer of an operator's share to the operator, as `MsgTransferCredits`."""

    __tablename__ = "chat_payouts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    operator: Mapped[str] = mapped_column(String(128), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    """Credits sent: `gross * share_bps // 10000`."""
    gross: Mapped[int] = mapped_column(BigInteger)
    """Credits captured on the operator's node by the requests this payout covers."""
    requests: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    """pending (recorded, maybe broadcast) | sent (on the ledger)"""
    memo: Mapped[str] = mapped_column(String(128), unique=True)
    tx_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    height: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Ledger height the payout run was started at."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
