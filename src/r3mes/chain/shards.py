"""Which shard of a round a miner must take: a pure function of the round seed and address.

    preferred = SHA-256(seed as u64 little-endian || miner address, UTF-8) mod n_shards
    assigned  = the first of preferred, preferred+1, ... (mod n_shards) not yet claimed

where the u64 seed is the first 8 bytes (big-endian) of the round's block-hash seed (0 for
an empty seed). This is the rule miners use (r3mes.work.data.assign_shard with
r3mes.node.tasks.round_seed); the ledger enforces it so a miner cannot pick its data.
Claims only grow within a round, so a miner who computed its shard from any earlier view
of the claims gets the same answer at delivery unless that very shard was taken since.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection

_HEX_SEED = re.compile(r"^[0-9a-f]{16,}$")


def seed_u64(seed_hex: str) -> int:
    """The round's 64-bit task seed from its hex block-hash seed."""
    if seed_hex == "":
        return 0
    if not _HEX_SEED.match(seed_hex):
        raise ValueError(f"round seed {seed_hex[:80]!r} is not a lower-case hex hash")
    return int(seed_hex[:16], 16)


def preferred_shard(*, seed: int, miner: str, n_shards: int) -> int:
    if n_shards < 1 or not 0 <= seed < 2**64:
        raise ValueError("n_shards must be >= 1 and seed an unsigned 64-bit integer")
    digest = hashlib.sha256(seed.to_bytes(8, "little") + miner.encode()).digest()
    return int.from_bytes(digest, "big") % n_shards


def assigned_shard(*, seed_hex: str, miner: str, n_shards: int, claimed: Collection[int]) -> int:
    """The shard `miner` must submit for; its preferred one when every shard is claimed."""
    start = preferred_shard(seed=seed_u64(seed_hex), miner=miner, n_shards=n_shards)
    for step in range(n_shards):
        candidate = (start + step) % n_shards
        if candidate not in claimed:
            return candidate
    return start
