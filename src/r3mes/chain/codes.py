"""ABCI result codes of the ledger (0 is success; CometBFT shows them as `code`)."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    OK = 0
    DECODE = 1
    INVALID = 2
    UNAUTHORIZED = 3
    WRONG_SEQUENCE = 4
    INSUFFICIENT_FUNDS = 5
    UNKNOWN = 6
    NOT_PERMITTED = 7
    BAD_POW = 8
    WRONG_ROUND = 9
    DUPLICATE = 10
    TOO_LARGE = 11
    EXPIRED = 12
    DEVNET_ONLY = 13
    MEMPOOL_FULL = 14
    INTERNAL = 15
    """No longer produced: a handler bug propagates instead; kept so older results read."""
    WRONG_SHARD = 16
