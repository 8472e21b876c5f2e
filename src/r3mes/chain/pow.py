"""Anti-spam proof of work for SubmitGradient.

Valid iff SHA-256(preimage || nonce as 8 big-endian bytes) has at least `difficulty`
leading zero bits, where the preimage is the canonical, length-prefixed encoding of
(chain id, miner, round, shard, cid, digest): a solution is bound to one submission.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

from r3mes.chain.errors import ChainError
from r3mes.chain.msgs import MAX_U64, SubmitGradient

POW_DOMAIN = b"r3mes-pow-v1"


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def pow_preimage(msg: SubmitGradient, *, chain_id: str) -> bytes:
    """Canonical bytes of the submission the nonce is searched over (nonce excluded)."""
    parts = [
        POW_DOMAIN,
        chain_id.encode(),
        msg.creator.encode(),
        msg.round.to_bytes(8, "big"),
        msg.shard.to_bytes(4, "big"),
        msg.cid.encode(),
        msg.digest.encode(),
    ]
    return b"".join(_field(p) for p in parts)


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def pow_ok(msg: SubmitGradient, *, chain_id: str, difficulty: int) -> bool:
    """True iff `msg.pow_nonce` meets `difficulty` for this submission on `chain_id`."""
    if not 0 <= msg.pow_nonce <= MAX_U64:
        return False
    data = pow_preimage(msg, chain_id=chain_id) + msg.pow_nonce.to_bytes(8, "big")
    return leading_zero_bits(hashlib.sha256(data).digest()) >= difficulty


def solve_pow(
    msg: SubmitGradient,
    *,
    chain_id: str,
    difficulty: int,
    max_attempts: int = 1 << 40,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 1 << 16,
) -> SubmitGradient:
    """Return `msg` with a `pow_nonce` that meets `difficulty` (expected 2**difficulty hashes).

    `on_progress(attempts)` is called every `progress_every` attempts (for a progress bar).
    """
    if not 0 <= difficulty <= 64:
        raise ChainError("proof-of-work difficulty must be in [0, 64]")
    prefix = hashlib.sha256(pow_preimage(msg, chain_id=chain_id))
    threshold = 1 << (256 - difficulty)
    for nonce in range(max_attempts):
        h = prefix.copy()
        h.update(nonce.to_bytes(8, "big"))
        if int.from_bytes(h.digest(), "big") < threshold:
            return replace(msg, pow_nonce=nonce)
        if on_progress is not None and (nonce + 1) % progress_every == 0:
            on_progress(nonce + 1)
    raise ChainError(f"no proof-of-work solution within {max_attempts} attempts")
