"""ArtifactRecord validation, its registry-cache format, the registry's installable rule and
the explicit conversions (ledger JSON, cache files, the consensus entry and its spec)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from r3mes.registry.errors import InvalidArtifactRecord
from r3mes.registry.records import ArtifactRecord, installable, record_from_cache
from r3mes.storage.unixfs import compute_cid


def ledger_dict(**over: Any) -> dict[str, Any]:
    data = b"adapter bytes"
    base: dict[str, Any] = {
        "id": "coder",
        "kind": "adapter",
        "version": 1,
        "cid": compute_cid(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "base_model_id": "bitnet-tiny",
        "base_model_version": 1,
        "target_modules": ["q_proj", "v_proj"],
        "rank": 8,
        "hf_repo": None,
        "hf_revision": None,
        "approved_height": 12,
    }
    base.update(over)
    return base


def test_from_dict_round_trips() -> None:
    record = ArtifactRecord.from_dict(ledger_dict())
    assert record.target_modules == ("q_proj", "v_proj")
    assert ArtifactRecord.from_dict(record.to_dict()) == record
    assert record.ref == "adapter coder@1"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"cid": "Qmnotacid"}, "cid"),
        ({"sha256": "AB" * 32}, "sha256"),
        ({"sha256": "ab" * 31}, "sha256"),
        ({"size": -1}, "size"),
        ({"size": "12"}, "size"),
        ({"kind": "weights"}, "kind"),
        ({"id": "../etc"}, "id"),
        ({"id": ""}, "id"),
        ({"version": "1/2"}, "version"),
        ({"version": "1.0.0"}, "version"),
        ({"version": -1}, "version"),
        ({"version": True}, "version"),
        ({"base_model_version": "x"}, "base_model_version"),
        ({"base_model_id": None}, "base_model_id"),
        ({"rank": -3}, "rank"),
        ({"approved_height": "x"}, "approved_height"),
        ({"target_modules": "q_proj"}, "target_modules"),
    ],
)
def test_malformed_records_are_rejected(override: dict[str, Any], field: str) -> None:
    """What the registry reads back from its cache: a record, and an installable one."""
    with pytest.raises(InvalidArtifactRecord) as info:
        record_from_cache(ledger_dict(**override))
    assert info.value.field == field


def test_missing_key_is_rejected() -> None:
    raw = ledger_dict()
    del raw["sha256"]
    with pytest.raises(InvalidArtifactRecord):
        ArtifactRecord.from_dict(raw)


def test_models_need_no_base_model() -> None:
    record = ArtifactRecord.from_dict(
        ledger_dict(kind="model", base_model_id=None, base_model_version=None, rank=None)
    )
    assert record.base_model_id is None


def test_legacy_string_versions_in_cache_files_become_integers() -> None:
    """Registry caches written before versions were integers hold "3"; reading converts."""
    record = ArtifactRecord.from_dict(ledger_dict(version="3", base_model_version="1"))
    assert (record.version, record.base_model_version) == (3, 1)
    assert record.to_dict()["version"] == 3
    with pytest.raises(InvalidArtifactRecord, match="legacy version"):
        ArtifactRecord.from_dict(ledger_dict(version="1.0.0"))


def test_ledger_json_converts_both_ways() -> None:
    """The ledger's JSON (integer versions, "" and 0 for absent, a status) becomes the
    record explicitly and `to_ledger` goes back; the ledger never sends string versions."""
    raw = ledger_dict()
    common = {k: raw[k] for k in ("id", "kind", "cid", "sha256", "size", "approved_height")}
    adapter = {
        **common,
        "version": 3,
        "base_model_id": "bitnet-tiny",
        "base_model_version": 1,
        "target_modules": ["q_proj", "v_proj"],
        "rank": 8,
        "hf_repo": "",
        "hf_revision": "",
        "status": "approved",
    }
    record = ArtifactRecord.from_ledger(adapter)
    assert (record.version, record.base_model_version, record.hf_repo) == (3, 1, None)
    assert record.rank == 8 and record.target_modules == ("q_proj", "v_proj")
    assert record.to_ledger() == adapter
    assert ArtifactRecord.from_ledger(record) is record
    dataset = {
        **common,
        "kind": "dataset",
        "version": 1,
        "base_model_id": "",
        "base_model_version": 0,
        "target_modules": [],
        "rank": 0,
        "hf_repo": "",
        "hf_revision": "",
        "status": "approved",
    }
    plain = ArtifactRecord.from_ledger(dataset)
    assert (plain.base_model_id, plain.base_model_version, plain.rank) == (None, None, None)
    assert plain.to_ledger() == dataset
    pending = ArtifactRecord.from_ledger({**dataset, "status": "pending", "approved_height": 0})
    assert pending.status == "pending" and pending.to_ledger()["status"] == "pending"
    with pytest.raises(InvalidArtifactRecord, match="integers"):
        ArtifactRecord.from_ledger({**adapter, "version": "3"})
    with pytest.raises(InvalidArtifactRecord, match="record"):
        ArtifactRecord.from_ledger(["not", "a", "record"])
    with pytest.raises(InvalidArtifactRecord, match="status"):
        ArtifactRecord.from_ledger({**dataset, "status": "maybe"})


def test_ledger_legal_records_are_not_all_installable() -> None:
    """The ledger allows ids with '/' or ':' and any alphanumeric CID (a proposer numbers
    versions past such an entry); the registry installs only folder-safe, real-CID,
    approved records and says which field stops it."""
    raw = {**ledger_dict(kind="dataset"), "base_model_id": "", "base_model_version": 0}
    assert installable(ArtifactRecord.from_ledger(raw)).id == "coder"
    for override, field in (
        ({"id": "org/data:v1"}, "id"),
        ({"id": "a/../../etc"}, "id"),
        ({"cid": "bafymodel"}, "cid"),
        ({"status": "pending", "approved_height": 0}, "status"),
    ):
        record = ArtifactRecord.from_ledger({**raw, **override})  # a valid record ...
        with pytest.raises(InvalidArtifactRecord) as info:
            installable(record)  # ... that no node installs
        assert info.value.field == field


def test_the_consensus_entry_and_its_spec_convert_explicitly() -> None:
    """`views.record_of` is the one conversion from the ledger's consensus entry; `to_spec`
    and `from_spec` go between the record and the spec a RegisterArtifact carries."""
    from r3mes.chain.state import ArtifactRecord as ConsensusEntry
    from r3mes.chain.views import artifact_json, record_of

    record = ArtifactRecord.from_dict(ledger_dict())
    spec = record.to_spec()
    assert (spec.base_model_id, spec.rank, spec.hf_repo) == ("bitnet-tiny", 8, "")
    assert ArtifactRecord.from_spec(spec, approved_height=12) == record
    entry = ConsensusEntry(spec, "approved", "remes1creator", 10, approved_height=12)
    assert record_of(entry) == record
    assert artifact_json(entry) == record.to_ledger()
    waiting = record_of(ConsensusEntry(spec, "pending", "remes1creator", 10))
    assert (waiting.status, waiting.approved_height) == ("pending", 0)
