"""Disputes over training steps: Merkle commitments to step digests, and bisection.

A miner commits to the digests of its training state after every step (``digests[0]`` is the
start, ``digests[i]`` the state after i steps; `r3mes.work.training.TrainState.digest`) by
their Merkle root::

    leaf  = SHA-256(0x00 || digest)        node = SHA-256(0x01 || left || right)

An odd node at the end of a level is promoted unchanged. `merkle_proof` gives the sibling
path of one leaf and `verify_merkle_proof` checks it against a root, so a party can show the
ledger one committed digest without posting the list.

Two parties whose digest lists agree at step 0 and differ at step ``steps`` narrow their
disagreement by bisection: both post their digest at ``mid = (lo + hi) // 2``; equal digests
move ``lo`` up, different ones move ``hi`` down. Each state depends on the one before, so the
invariant "agree at lo, differ at hi" holds throughout, and after at most
``ceil(log2(steps))`` rounds ``hi == lo + 1``: ONE step, which referees re-execute from the
agreed state at ``lo``. The ledger (`r3mes.chain`) and the work side (`r3mes.work`) both use
these rules; this module needs nothing but the standard library, and integers only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from r3mes.errors import R3mesError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_STEPS = 1 << 20
"""Most steps a commitment or a bisection covers (20 halvings)."""


class BisectionError(R3mesError, ValueError):
    """A digest, proof or bisection move is malformed or out of range."""


def _digest_bytes(d: object) -> bytes:
    if not isinstance(d, str) or not _HEX64.fullmatch(d):
        raise BisectionError(f"step digests must be 64 lowercase hex characters, got {d!r}")
    return bytes.fromhex(d)


def _leaf(d: str) -> bytes:
    return hashlib.sha256(b"\x00" + _digest_bytes(d)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(digests: Sequence[str]) -> str:
    """Merkle root (hex) over hex digests (see module docstring)."""
    if not digests:
        raise BisectionError("cannot build a Merkle root of no digests")
    if len(digests) > MAX_STEPS + 1:
        raise BisectionError(f"at most {MAX_STEPS + 1} digests, got {len(digests)}")
    level = [_leaf(d) for d in digests]
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def merkle_proof(digests: Sequence[str], index: int) -> tuple[str, ...]:
    """The sibling hashes (hex, leaf level first) proving ``digests[index]`` under the root.

    A level where the node is the promoted odd one contributes no sibling.
    """
    n = len(digests)
    if not _is_int(index) or not 0 <= index < n:
        raise BisectionError(f"index must be an integer in [0, {n}), got {index!r}")
    level = [_leaf(d) for d in digests]
    path: list[str] = []
    i = index
    while len(level) > 1:
        sibling = i ^ 1
        if sibling < len(level):
            path.append(level[sibling].hex())
        nxt = [_node(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, i = nxt, i // 2
    return tuple(path)


def verify_merkle_proof(
    *, root: str, count: int, index: int, digest: str, proof: Sequence[str]
) -> bool:
    """True when `digest` is leaf `index` of `count` leaves under `root` (hex)."""
    if not _is_int(count) or not 1 <= count <= MAX_STEPS + 1:
        return False
    if not _is_int(index) or not 0 <= index < count:
        return False
    try:
        node = _leaf(digest)
        siblings = [_digest_bytes(p) for p in proof]
        want = _digest_bytes(root)
    except BisectionError:
        return False
    used, i, width = 0, index, count
    while width > 1:
        if i ^ 1 < width:  # a sibling exists at this level
            if used == len(siblings):
                return False
            sib = siblings[used]
            used += 1
            node = _node(node, sib) if i % 2 == 0 else _node(sib, node)
        i, width = i // 2, (width + 1) // 2
    return used == len(siblings) and node == want


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Bisection:
    """Where a dispute over `steps` training steps stands: agreed at `lo`, differ at `hi`."""

    steps: int
    lo: int
    hi: int
    rounds: int = 0
    """Halvings done so far (one message round each)."""

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise BisectionError(f"steps must be an integer in [1, {MAX_STEPS}]")
        if not (_is_int(self.lo) and _is_int(self.hi) and 0 <= self.lo < self.hi <= self.steps):
            raise BisectionError(f"need 0 <= lo < hi <= steps, got lo={self.lo} hi={self.hi}")
        if not _is_int(self.rounds) or self.rounds < 0:
            raise BisectionError("rounds must be a non-negative integer")


def open_bisection(steps: int) -> Bisection:
    """A dispute whose parties agree on the start (step 0) and differ after `steps` steps."""
    return Bisection(steps=steps, lo=0, hi=steps)


def is_narrowed(b: Bisection) -> bool:
    """True once the disagreement is one step (``lo -> lo + 1``): time for referees."""
    return b.hi == b.lo + 1


def query_step(b: Bisection) -> int:
    """The step whose digest both parties post next."""
    if is_narrowed(b):
        raise BisectionError("the dispute is narrowed to one step; no more queries")
    return (b.lo + b.hi) // 2


def advance(b: Bisection, *, agree: bool) -> Bisection:
    """The next position once both digests at `query_step(b)` are known."""
    mid = query_step(b)
    if agree:
        return Bisection(b.steps, mid, b.hi, b.rounds + 1)
    return Bisection(b.steps, b.lo, mid, b.rounds + 1)


def max_rounds(steps: int) -> int:
    """Most halvings a dispute over `steps` steps takes: ceil(log2(steps))."""
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
        raise BisectionError(f"steps must be an integer in [1, {MAX_STEPS}]")
    return (steps - 1).bit_length()
