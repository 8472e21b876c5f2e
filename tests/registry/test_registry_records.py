"""ArtifactRecord validation, its registry-cache format and the ledger conversions."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any

import pytest

from r3mes.registry.errors import InvalidArtifactRecord
from r3mes.registry.records import ArtifactRecord
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
    with pytest.raises(InvalidArtifactRecord) as info:
        ArtifactRecord.from_dict(ledger_dict(**override))
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


def test_from_ledger_and_to_ledger_are_the_one_boundary() -> None:
    """The client's `ArtifactInfo` (integer versions, "" and 0 for absent) becomes the
    node's record explicitly, `to_ledger` goes back, and a ledger JSON object converts the
    same way; the ledger never sends string versions."""
    from r3mes.chain.client_types import ArtifactInfo

    raw = ledger_dict()
    common = {k: raw[k] for k in ("id", "kind", "cid", "sha256", "size", "approved_height")}
    adapter = ArtifactInfo(
        **common,
        version=3,
        base_model_id="bitnet-tiny",
        base_model_version=1,
        target_modules=["q_proj", "v_proj"],
        rank=8,
        hf_repo="",
        hf_revision="",
        status="approved",
    )
    record = ArtifactRecord.from_ledger(adapter)
    assert (record.version, record.base_model_version, record.hf_repo) == (3, 1, None)
    assert record.rank == 8 and record.target_modules == ("q_proj", "v_proj")
    assert record.to_ledger() == adapter
    assert ArtifactRecord.from_ledger(asdict(adapter)) == record
    dataset = ArtifactInfo(
        **{**common, "kind": "dataset"},
        version=1,
        base_model_id="",
        base_model_version=0,
        target_modules=[],
        rank=0,
        hf_repo="",
        hf_revision="",
        status="approved",
    )
    plain = ArtifactRecord.from_ledger(dataset)
    assert (plain.base_model_id, plain.base_model_version, plain.rank) == (None, None, None)
    assert plain.to_ledger() == dataset
    with pytest.raises(InvalidArtifactRecord, match="integers"):
        ArtifactRecord.from_ledger({**asdict(adapter), "version": "3"})
    with pytest.raises(InvalidArtifactRecord, match="record"):
        ArtifactRecord.from_ledger(["not", "a", "record"])
    with pytest.raises(InvalidArtifactRecord, match="cid"):
        ArtifactRecord.from_ledger({**asdict(dataset), "cid": "bafymodel"})  # ledger-legal only
