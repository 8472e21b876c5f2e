"""Tables of the accounts concern: accounts, login, API keys, the credit ledger, deposits.

The credit ledger is double-entry: every movement is one `journal_transactions` row with two
or more `journal_entries` whose amounts sum to zero. A user's books are `available` and
`held`; their balances are kept on the `accounts` row (updated in the same database
transaction, CHECK >= 0), so a spend can never take an account below zero even when many
requests race. System books (`system:deposits`, `system:revenue`, ...) have no balance row:
their balance is the sum of their entries (no hot row every capture would queue on).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column

from r3mes.backend.db.base import Base, BigId

Amount = BigInteger
"""Credits are integers, never floats."""


class UtcDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that always hands back aware UTC datetimes.

    SQLite stores no zone, so values are converted to UTC on the way in and marked UTC on
    the way out; comparisons in SQL then compare like with like on both databases.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Account(Base):
    """One wallet address; its spendable (`available`) and reserved (`held`) credits."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("available >= 0", name="available_nonnegative"),
        CheckConstraint("held >= 0", name="held_nonnegative"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(64), unique=True)
    tier: Mapped[str] = mapped_column(String(32), default="default", server_default="default")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    available: Mapped[int] = mapped_column(Amount, default=0, server_default="0")
    held: Mapped[int] = mapped_column(Amount, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LoginChallenge(Base):
    """A single-use nonce message a wallet signs to log in (ADR-036)."""

    __tablename__ = "login_challenges"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class RefreshToken(Base):
    """A refresh token (stored as SHA-256); rotated on use, its family revoked on reuse."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(String(32), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiKey(Base):
    """An API key: `lookup_id` is the public part, `secret_hash` HMAC-SHA256 under the pepper."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    lookup_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(100))
    """Space-separated scopes (`chat read`)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Hold(Base):
    """Credits reserved for one request: open until captured, released or expired."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("status IN ('open', 'captured', 'released')", name="status_known"),
        Index("ix_holds_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    amount: Mapped[int] = mapped_column(Amount)
    status: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    captured: Mapped[int] = mapped_column(Amount, default=0, server_default="0")


class JournalTransaction(Base):
    """One balanced movement of credits (its entries sum to zero).

    `(scope, idempotency_key)` is unique: `scope` is the account id for account operations
    and `system` for payouts, so a retried request finds its first result.
    """

    __tablename__ = "journal_transactions"
    __table_args__ = (
        UniqueConstraint("scope", "idempotency_key", name="uq_journal_transactions_idempotency"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    amount: Mapped[int] = mapped_column(Amount)
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("holds.id"), nullable=True)
    node: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    """Operator address of the serving node a capture paid for (payouts sum these)."""
    ref: Mapped[str] = mapped_column(String(200), default="", server_default="")
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Who made it when not the account itself (the admin of a grant)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class JournalEntry(Base):
    """One leg of a journal transaction: `amount` (signed) moved into `book`."""

    __tablename__ = "journal_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    transaction_id: Mapped[int] = mapped_column(
        ForeignKey("journal_transactions.id", ondelete="CASCADE"), index=True
    )
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    book: Mapped[str] = mapped_column(String(32))
    """`available` / `held` of `account_id`, or a system book (`system:revenue`, ...)."""
    amount: Mapped[int] = mapped_column(Amount)


class Deposit(Base):
    """A ledger transfer to the deposit address, credited exactly once (unique tx hash)."""

    __tablename__ = "deposits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tx_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    sender: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(Amount)
    height: Mapped[int] = mapped_column(BigInteger)
    journal_id: Mapped[int] = mapped_column(ForeignKey("journal_transactions.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ChainCursor(Base):
    """The last ledger height a chain follower handler has fully processed."""

    __tablename__ = "chain_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    height: Mapped[int] = mapped_column(BigInteger)


class AdminAudit(Base):
    """Every admin action (grants, key revokes, account changes), who and when."""

    __tablename__ = "admin_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(100))
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


__all__ = [
    "Account",
    "AdminAudit",
    "ApiKey",
    "ChainCursor",
    "Deposit",
    "Hold",
    "JournalEntry",
    "JournalTransaction",
    "LoginChallenge",
    "RefreshToken",
]
