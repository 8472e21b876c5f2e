"""Registering a node's role on the ledger (idempotent)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.crypto import SigningKey

logger = logging.getLogger(__name__)

Role = Literal["miner", "validator", "proposer", "serving"]
"""The ledger's node roles (as its `RegisterNode` message spells them)."""


def ensure_registered(
    client: BlockchainClient, key: SigningKey, *, role: Role, endpoint: str, stake: int = 0
) -> bool:
    """Send `RegisterNode` unless the account already holds `role`; True if it was sent."""
    from r3mes.chain.msgs import RegisterNode

    account = client.account(key.address)
    if role in account.roles:
        return False
    if stake > account.balance:
        logger.warning("balance %d is below the stake %d; staking it all", account.balance, stake)
        stake = account.balance
    msg = RegisterNode(creator=key.address, role=role, endpoint=endpoint, stake=stake)
    client.sign_and_broadcast(key, [msg])
    logger.info("registered %s as %s", key.address, role)
    return True
