"""The registry's view of artifact records: one type, one stricter rule.

The record is `r3mes.chain.artifact_record.ArtifactRecord`, the one artifact record outside
the ledger's state (the chain client lists it, the registry caches it, the roles work with
it; see that module for its conversions). It holds what the ledger allows; a record the
registry turns into folders must also be *installable*: folder-safe names (no '/', ':' or
'..') and a real CID. `installable` checks that, explicitly: on every entry a sync takes
from the ledger (one that fails is rejected on its own), on every entry read back from the
cache files, and where `LocalArtifacts` builds an artifact's path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from r3mes.chain.artifact_record import ArtifactRecord
from r3mes.registry.errors import InvalidArtifactRecord
from r3mes.storage.multiformats import is_cid

__all__ = [
    "KINDS",
    "ArtifactRecord",
    "ArtifactSource",
    "InvalidArtifactRecord",
    "installable",
    "record_from_cache",
]

KINDS = ("model", "dataset", "adapter")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactSource(Protocol):
    """Where approved artifacts come from; `r3mes.chain.client.BlockchainClient` satisfies it.

    Entries are `ArtifactRecord`s (what the client lists) or dicts in the ledger's JSON shape
    (a test's own source), converted with `ArtifactRecord.from_ledger`; the registry checks
    each with `installable`, so one entry it cannot install is rejected on its own.
    """

    def approved_artifacts(self, kind: str | None = None) -> Sequence[object]:
        """Approved artifact entries, optionally of one kind."""
        ...


def _check_name(field: str, value: str) -> None:
    if not _NAME_RE.match(value):
        raise InvalidArtifactRecord(field, "must be 1-128 chars of letters, digits, . _ -")
    if ".." in value:
        raise InvalidArtifactRecord(field, "must not contain '..'")


def installable(record: ArtifactRecord) -> ArtifactRecord:
    """`record` if the registry can install it (approved, folder-safe names, a real CID);
    InvalidArtifactRecord naming the field otherwise."""
    if record.status != "approved":
        raise InvalidArtifactRecord("status", f"is {record.status!r}, not approved")
    _check_name("id", record.id)
    if record.base_model_id is not None:
        _check_name("base_model_id", record.base_model_id)
    if not is_cid(record.cid):
        raise InvalidArtifactRecord("cid", f"{record.cid[:80]!r} is not a valid CID")
    return record


def record_from_cache(raw: object) -> ArtifactRecord:
    """An entry of the registry's cache files (`ArtifactRecord.to_dict`'s shape), installable."""
    return installable(ArtifactRecord.from_dict(raw))
