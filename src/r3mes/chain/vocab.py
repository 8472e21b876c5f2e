"""The ledger's closed vocabularies: roles, verdicts, artifact kinds and record statuses.

Each is a `Literal` type (what mypy checks) and the tuple of its values (what the checks
at the byte boundary and the CLI's choices use), defined once here. Values stay plain
strings at run time, so the state's canonical encoding and app hashes do not change.
This module imports nothing, so the CLI reads it without loading protobuf.
"""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

W = TypeVar("W", bound=str)

Role = Literal["miner", "validator", "proposer", "serving"]
Verdict = Literal["accept", "reject"]
ArtifactKind = Literal["model", "dataset", "adapter"]
RoundStatus = Literal["open", "closed"]
"""A round takes submissions while open; it closes when the next round opens."""
SubmissionStatus = Literal["pending", "verified", "rejected"]
"""Pending until a quorum of validators agrees on one verdict."""
ProposalStatus = Literal["pending", "approved", "rejected", "stale"]
"""A proposed adapter version waits for its validators' quorum; "stale": another version
became current first."""
DisputeStatus = Literal["bisecting", "refereeing", "resolved"]
ArtifactStatus = Literal["pending", "approved"]
"""Registered artifacts wait for the genesis authority's approval."""

ROLES: tuple[Role, ...] = get_args(Role)
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
KINDS: tuple[ArtifactKind, ...] = get_args(ArtifactKind)
ROUND_STATUSES: tuple[RoundStatus, ...] = get_args(RoundStatus)
SUBMISSION_STATUSES: tuple[SubmissionStatus, ...] = get_args(SubmissionStatus)
ARTIFACT_STATUSES: tuple[ArtifactStatus, ...] = get_args(ArtifactStatus)


def one_of(value: str, allowed: tuple[W, ...], what: str) -> W:
    """`value` as a member of the vocabulary `allowed`; ValueError naming `what` otherwise."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value[:40]!r}")
    return allowed[allowed.index(value)]
