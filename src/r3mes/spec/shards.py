"""Which shard of a round a miner must take: a pure function of the round seed and address.

    seed      = the first 8 bytes (big-endian) of the round's hex block-hash seed; 0 when the
                seed is empty (round 1 follows genesis, whose block hash is empty)
    preferred = SHA-256(seed as u64 little-endian || miner address, UTF-8) mod n_shards
    assigned  = the first of preferred, preferred+1, ... (mod n_shards) not yet claimed;
                the preferred shard again when every shard is claimed

The ledger enforces this rule (a miner cannot pick its data) and miners use it to choose the
shard they train. Claims only grow within a round, so a miner who computed its shard from any
earlier view of the claims gets the same answer at delivery unless that very shard was taken
since.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Set

from r3mes.errors import R3mesError

_HEX_SEED = re.compile(r"^[0-9a-f]{16,128}$")


class RuleInputError(R3mesError, ValueError):
    """An input to a consensus rule is out of its domain (a bad seed, shard count, address)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def round_seed(seed_hex: str) -> int:
    """The round's 64-bit task seed from its hex block-hash seed."""
    if seed_hex == "":
        return 0
    if not isinstance(seed_hex, str) or not _HEX_SEED.match(seed_hex):
        raise RuleInputError(f"round seed {str(seed_hex)[:80]!r} is not a lowercase hex hash")
    return int(seed_hex[:16], 16)


def preferred_shard(*, seed: int, miner: str, n_shards: int) -> int:
    """SHA-256(seed as u64 little-endian || miner address) mod n_shards."""
    if not _is_int(n_shards) or n_shards < 1:
        raise RuleInputError(f"n_shards must be an integer >= 1, got {n_shards!r}")
    if not _is_int(seed) or not 0 <= seed < 2**64:
        raise RuleInputError(f"seed must be an unsigned 64-bit integer, got {seed!r}")
    if not isinstance(miner, str) or not miner:
        raise RuleInputError(f"miner must be a non-empty address string, got {miner!r}")
    digest = hashlib.sha256(seed.to_bytes(8, "little") + miner.encode()).digest()
    return int.from_bytes(digest, "big") % n_shards


def assign_shard(*, seed: int, miner: str, n_shards: int, claimed: Set[int] = frozenset()) -> int:
    """The miner's shard: the preferred one, linearly probed past the `claimed` shards."""
    start = preferred_shard(seed=seed, miner=miner, n_shards=n_shards)
    if not isinstance(claimed, Set):
        raise RuleInputError(
            f"claimed must be a set of shard indices, got {type(claimed).__name__}"
        )
    for step in range(n_shards):
        candidate = (start + step) % n_shards
        if candidate not in claimed:
            return candidate
    return start


def round_shard(*, seed_hex: str, miner: str, n_shards: int, claimed: Set[int]) -> int:
    """`assign_shard` for a round given by its hex seed, as the ledger and its clients see it."""
    return assign_shard(seed=round_seed(seed_hex), miner=miner, n_shards=n_shards, claimed=claimed)
