"""When a submission's error-feedback residual carries forward: one rule, read off the ledger.

A validator replays each miner's residual to re-execute the next update, so miner and
validator must agree, for every submission, whether its residual became current. Both
apply `residual_fate` to the ledger's record of the submission, never to their own
timing: the residual carries forward only if the ledger *verified* the submission at a
height no later than its deadline, the close of round `round + settle_rounds`. A
rejected submission, one verified after the deadline, and one still pending once the
chain has passed the deadline all leave the previous residual in force. The deadline is
a height on the ledger, so once the chain is past it the answer can never change: a miner
that gave up waiting and a validator that attests late reach the same verdict.

The core is pure (`deadline_height`, `settled_height`, `residual_fate`); `fate_on_chain`
is the one shell that reads the ledger.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.client_types import SubmissionInfo


class Fate(StrEnum):
    """What becomes of the residual a submission left behind."""

    PROMOTE = "promote"
    """Verified in time: the staged residual becomes current."""
    DROP = "drop"
    """Rejected, verified late or expired: the previous residual stays current."""
    WAIT = "wait"
    """Still pending and the deadline has not passed: not decided yet."""


def deadline_height(*, open_height: int, close_height: int, settle_rounds: int) -> int:
    """Last height at which a verification of a submission in this round still counts."""
    length = close_height - open_height + 1  # rounds all have the same length
    return close_height + settle_rounds * length


def settled_height(sub: SubmissionInfo) -> int | None:
    """Height of the attestation that settled `sub` (None while pending).

    The ledger records it; for records without it, the settling attestation is the highest
    one carrying the final verdict (late attestations came after settlement).
    """
    if sub.status == "pending":
        return None
    if sub.settled_height:
        return sub.settled_height
    verdict = "accept" if sub.status == "verified" else "reject"
    heights = [int(a.get("height", 0)) for a in sub.attestations if a.get("verdict") == verdict]
    return max(heights) if heights else None


def residual_fate(sub: SubmissionInfo | None, *, deadline: int, chain_height: int) -> Fate:
    """The fate of `sub`'s residual, given the chain height read *before* `sub` was.

    `sub` is None when the ledger holds no submission for the transaction (it counts as
    pending). Reading the height first matters: a submission seen pending at a height past
    the deadline cannot later turn out to have been verified by the deadline.
    """
    if sub is not None and sub.status == "verified":
        height = settled_height(sub)
        return Fate.PROMOTE if height is not None and height <= deadline else Fate.DROP
    if sub is not None and sub.status != "pending":
        return Fate.DROP
    return Fate.DROP if chain_height > deadline else Fate.WAIT


def fate_on_chain(
    client: BlockchainClient,
    *,
    round_number: int,
    sub: SubmissionInfo | None,
    settle_rounds: int,
    chain_height: int,
) -> Fate:
    """`residual_fate` with the deadline read from the ledger's record of the round."""
    rnd = client.round(round_number)
    deadline = deadline_height(
        open_height=rnd.open_height, close_height=rnd.close_height, settle_rounds=settle_rounds
    )
    return residual_fate(sub, deadline=deadline, chain_height=chain_height)
