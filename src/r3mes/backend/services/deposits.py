"""Deposits: a `MsgTransferCredits` on the ledger to the backend's deposit address credits
the sender's account, exactly once per transaction hash.

This is a chain-follower handler: it runs inside the follower's per-block transaction, so
the credit and the cursor move commit together. The `deposits.tx_hash` unique constraint and
the journal's idempotency key (`deposit:<hash>`) both stop a second credit, whether a block
is replayed, an event repeats, or two backend processes follow the same chain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.accounts import Deposit
from r3mes.backend.services import credits
from r3mes.backend.services.chain_follower import ChainBlock, ChainTx, Handler
from r3mes.backend.settings import BackendSettings
from r3mes.chain.crypto import validate_address
from r3mes.chain.errors import ChainError
from r3mes.chain.keystore import Keystore
from r3mes.chain.msgs import TransferCredits
from r3mes.paths import Home

log = logging.getLogger(__name__)

HANDLER_NAME = "deposits"


@dataclass(frozen=True)
class Credited:
    tx_hash: str
    address: str
    account_id: int
    amount: int


def deposit_address(settings: BackendSettings) -> str | None:
    """The configured deposit address, else the treasury key's; None if neither exists."""
    if settings.deposit_address:
        return validate_address(settings.deposit_address)
    try:
        return Keystore(Home(root=settings.home).keys).show(settings.treasury_key).address
    except (ChainError, OSError, KeyError):
        return None


def deposit_amount(tx: ChainTx, address: str) -> int:
    """Credits `tx` moved from its signer to `address` (0 if it failed or moved none)."""
    if not tx.ok or tx.signer is None:
        return 0
    return sum(
        msg.amount
        for msg in tx.msgs
        if isinstance(msg, TransferCredits) and msg.to == address and msg.creator == tx.signer
    )


async def apply_block(s: AsyncSession, block: ChainBlock, *, address: str) -> list[Credited]:
    """Credit every deposit in `block` not credited before."""
    done: list[Credited] = []
    for tx in block.txs:
        amount = deposit_amount(tx, address)
        if amount <= 0:
            continue
        seen = await s.scalar(select(Deposit.id).where(Deposit.tx_hash == tx.hash))
        if seen is not None:
            continue
        assert tx.signer is not None
        account_id = await credits.ensure_account(s, address=tx.signer, now=block.time)
        moved = await credits.deposit(
            s,
            account_id=account_id,
            amount=amount,
            idempotency_key=f"deposit:{tx.hash}",
            ref=f"tx:{tx.hash}",
        )
        s.add(
            Deposit(
                tx_hash=tx.hash,
                account_id=account_id,
                sender=tx.signer,
                amount=amount,
                height=block.height,
                journal_id=moved.journal_id,
                created_at=credits.utcnow(),
            )
        )
        await s.flush()
        log.info("deposit of %d credits from %s at height %d", amount, tx.signer, block.height)
        done.append(Credited(tx.hash, tx.signer, account_id, amount))
    return done


def handler(address: str) -> Handler:
    """The chain-follower handler that credits deposits to `address`."""

    async def handle(s: AsyncSession, block: ChainBlock) -> None:
        await apply_block(s, block, address=address)

    return handle
