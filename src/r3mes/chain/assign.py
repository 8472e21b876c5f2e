"""Which validators judge what: a stake-weighted draw from the round seed, integers only.

`draw` picks up to `n` distinct addresses from `(address, stake)` candidates. Draw i takes
`sha256(domain || seed || i)` as a big integer modulo the remaining total weight and walks
the candidates in address order; the chosen one leaves the pool. Each candidate weighs its
stake, at least 1 (a network whose genesis needs no stake still assigns). The same inputs
give the same answer on every node, and a miner cannot choose its judges: the seed is the
hash of the block before its round opened, the submission id is the ledger's counter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

ASSIGN_DOMAIN = b"r3mes-assign-v1"


def assignment_seed(round_seed_hex: str, kind: str, number: int) -> bytes:
    """The seed of one draw: the round's seed, what is judged ("submission", "adapter",
    "referee") and its number."""
    return hashlib.sha256(
        ASSIGN_DOMAIN
        + len(round_seed_hex).to_bytes(2, "big")
        + round_seed_hex.encode()
        + len(kind).to_bytes(1, "big")
        + kind.encode()
        + number.to_bytes(8, "big")
    ).digest()


def draw(candidates: Iterable[tuple[str, int]], *, seed: bytes, n: int) -> tuple[str, ...]:
    """Up to `n` distinct addresses drawn with probability proportional to stake (sorted)."""
    pool = sorted({address: max(stake, 1) for address, stake in candidates}.items())
    chosen: list[str] = []
    for i in range(min(n, len(pool))):
        total = sum(weight for _, weight in pool)
        pick = int.from_bytes(hashlib.sha256(seed + i.to_bytes(4, "big")).digest(), "big") % total
        for j, (address, weight) in enumerate(pool):
            if pick < weight:
                chosen.append(address)
                del pool[j]
                break
            pick -= weight
    return tuple(sorted(chosen))
