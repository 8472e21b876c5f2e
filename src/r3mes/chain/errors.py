"""The ledger's error hierarchy: every error `r3mes.chain` raises on purpose."""

from __future__ import annotations

from r3mes.errors import R3mesError


class ChainError(R3mesError):
    """Base class of ledger errors."""


class KeyMaterialError(ChainError):
    """A key, mnemonic or address is malformed."""


class AddressError(KeyMaterialError):
    """A bech32 address is malformed or has the wrong prefix."""


class KeystoreError(ChainError):
    """A keystore file is missing, corrupt, or the passphrase is wrong."""


class TxDecodeError(ChainError):
    """Transaction bytes could not be decoded (malformed, unknown message or too large)."""


class TxInvalid(ChainError):
    """A transaction was rejected by check_tx or deliver_tx.

    `code` follows the ABCI convention (0 is success), `log` says why.
    """

    def __init__(self, code: int, log: str) -> None:
        super().__init__(f"transaction rejected (code {code}): {log}")
        self.code = code
        self.log = log


class GenesisError(ChainError):
    """The genesis document is malformed or violates a parameter bound."""


class StoreError(ChainError):
    """The block/state store is corrupt or inconsistent."""


class BlockInvalid(ChainError):
    """A block cannot be applied to the current state."""


class ClientError(ChainError):
    """A request to a ledger node failed (network, timeout, or an error answer)."""


class TxRejected(ClientError):
    """The node rejected a transaction (check_tx or deliver_tx failed)."""

    def __init__(self, code: int, log: str, tx_hash: str = "") -> None:
        super().__init__(f"transaction {tx_hash or ''} rejected (code {code}): {log}".strip())
        self.code = code
        self.log = log
        self.tx_hash = tx_hash


class NotFound(ClientError):
    """The node answered 404: the object asked for does not exist."""
