"""Registries over a test double of the chain: sync, pull, verify, compatibility, conflicts,
dataset streaming and all-or-nothing `ensure_ready_atomic`."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from r3mes.paths import Home
from r3mes.registry.bundle import pack_dir
from r3mes.registry.download import BlockstoreFetcher, DownloadManager
from r3mes.registry.errors import (
    AdapterConflict,
    ArtifactNotFound,
    IncompatibleAdapter,
    RegistryError,
)
from r3mes.registry.unified import UnifiedRegistry
from r3mes.storage.blockstore import Blockstore
from r3mes.storage.errors import StorageWriteError


class FakeChain:
    """Stands in for BlockchainClient.approved_artifacts."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def approved_artifacts(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.entries if kind is None or e.get("kind") == kind]


def _entry(store: Blockstore, data: bytes, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cid": store.add_bytes(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "base_model_id": None,
        "base_model_version": None,
        "target_modules": [],
        "rank": None,
        "hf_repo": None,
        "hf_revision": None,
        "approved_height": 1,
    }
    base.update(fields)
    return base


def _bundle(tmp: Path, name: str, content: bytes) -> bytes:
    folder = tmp / "src" / name
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(content)
    (folder / "config.json").write_text('{"n_layer": 2}')
    return pack_dir(folder)


@pytest.fixture
def world(tmp_path: Path) -> tuple[UnifiedRegistry, FakeChain, Blockstore]:
    store = Blockstore(tmp_path / "network-blocks")
    chain = FakeChain()
    model = _bundle(tmp_path, "model", b"M" * 5000)
    chain.entries += [
        _entry(store, model, id="bitnet-tiny", kind="model", version=1),
        _entry(
            store,
            _bundle(tmp_path, "coder", b"A" * 300),
            id="coder",
            kind="adapter",
            version=1,
            base_model_id="bitnet-tiny",
            base_model_version=1,
            target_modules=["q_proj"],
            rank=4,
        ),
        _entry(
            store,
            _bundle(tmp_path, "coder2", b"B" * 300),
            id="coder",
            kind="adapter",
            version=2,
            base_model_id="bitnet-tiny",
            base_model_version=1,
            target_modules=["q_proj"],
            rank=4,
            approved_height=5,
        ),
        _entry(
            store,
            _bundle(tmp_path, "alien", b"C" * 300),
            id="alien",
            kind="adapter",
            version=1,
            base_model_id="other-model",
            base_model_version=9,
        ),
        _entry(store, b'{"t": 1}\n{"t": 2}\n{"t": 3}', id="chat", kind="dataset", version=1),
        {
            "id": "broken",
            "kind": "dataset",
            "version": 1,
            "cid": "nope",
            "sha256": "x",
            "size": 1,
        },
    ]
    manager = DownloadManager([BlockstoreFetcher(store)])
    registry = UnifiedRegistry(home=Home(tmp_path / "home"), downloader=manager, source=chain)
    return registry, chain, store


def test_sync_accepts_valid_and_reports_malformed(world: Any) -> None:
    registry, _, _ = world
    results = registry.sync_all()
    assert [r.id for r in results["model"].records] == ["bitnet-tiny"]
    assert len(results["adapter"].records) == 3
    assert len(results["dataset"].records) == 1
    assert "broken" in results["dataset"].rejected[0]
    assert registry.adapters.get("coder").version == 2  # latest approved


def test_pull_installs_and_verify_detects_tampering(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    path = registry.models.pull("bitnet-tiny")
    assert (path / "weights.safetensors").read_bytes() == b"M" * 5000
    assert registry.models.verify("bitnet-tiny")
    (path / "weights.safetensors").write_bytes(b"M" * 4999 + b"X")
    assert not registry.models.verify("bitnet-tiny")
    registry.models.pull("bitnet-tiny", force=True)
    assert registry.models.verify("bitnet-tiny")


def test_incompatible_adapter_is_refused_before_download(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    with pytest.raises(IncompatibleAdapter):
        registry.adapters.pull("alien")
    assert not registry.adapters.path(registry.adapters.get("alien")).exists()


def test_conflicts_between_versions(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    v1 = registry.adapters.get("coder", 1)
    v2 = registry.adapters.get("coder", 2)
    registry.adapters.install(v1)
    registry.adapters.install(v2)
    registry.adapters.activate(v1)
    assert registry.adapters.check_conflicts(v2) == ["coder@1 (same id, other version)"]
    with pytest.raises(AdapterConflict):
        registry.adapters.activate(v2)
    registry.adapters.activate(v2, replace=True)
    assert registry.adapters.active() == {"coder": 2}


def test_dataset_streams_lines(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    assert list(registry.datasets.stream("chat")) == [b'{"t": 1}', b'{"t": 2}', b'{"t": 3}']


def test_ensure_ready_atomic_success(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    result = registry.ensure_ready_atomic(required_adapters=["coder"], require_dataset="chat")
    assert result.success, result.error_message
    assert result.model_path is not None and (result.model_path / "config.json").exists()
    assert set(result.adapter_paths) == {"coder"}
    assert result.dataset_path is not None
    assert len(result.downloaded) == 3
    assert registry.adapters.active() == {"coder": 2}
    again = registry.ensure_ready_atomic(required_adapters=["coder"])
    assert again.success and again.downloaded == ()


def test_ensure_ready_atomic_rolls_back_everything(world: Any, tmp_path: Path) -> None:
    registry, chain, store = world
    # The dataset's blocks vanish from the only source: the model and adapter download fine,
    # then the dataset fails; nothing may remain.
    registry.sync_all()
    store.unpin(registry.datasets.get("chat").cid)
    store.gc()
    before = registry.adapters.active()
    result = registry.ensure_ready_atomic(required_adapters=["coder"], require_dataset="chat")
    assert not result.success
    assert "chat" in result.error_message
    assert not registry.models.path(registry.models.get("bitnet-tiny")).exists()
    assert not registry.adapters.path(registry.adapters.get("coder")).exists()
    assert registry.adapters.active() == before


def test_ensure_ready_atomic_rejects_wrong_base_model(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    result = registry.ensure_ready_atomic(required_adapters=["alien"])
    assert not result.success and "other-model" in result.error_message
    assert registry.local.home.models.exists() is False


def test_without_sync_or_chain_errors_are_clear(tmp_path: Path) -> None:
    registry = UnifiedRegistry(home=Home(tmp_path), downloader=DownloadManager([]))
    with pytest.raises(RegistryError, match="chain"):
        registry.models.sync_from_chain()
    result = registry.ensure_ready_atomic()
    assert not result.success and "sync" in result.error_message


def _read_only(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Fault injection: renaming onto `name` fails as on a read-only filesystem (a chmod
    would not stop root, which runs the tests in CI)."""
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == name:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_ensure_ready_atomic_read_only_cache_rolls_back(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _, _ = world
    registry.sync_all()
    active_file = registry.local.home.cache / "active-adapters.json"
    active_file.write_text("{}")
    _read_only(monkeypatch, "active-adapters.json")
    result = registry.ensure_ready_atomic(required_adapters=["coder"], require_dataset="chat")
    assert not result.success
    assert "active-adapters.json" in result.error_message
    assert "Read-only file system" in result.error_message
    for kind in ("models", "adapters", "datasets"):
        folder = getattr(registry.local.home, kind)
        assert [p for p in folder.rglob("*") if p.is_file()] == []
    assert active_file.read_text() == "{}"
    assert [p.name for p in registry.local.home.cache.iterdir() if "tmp" in p.name] == []


def test_ensure_ready_atomic_unreadable_active_list_is_a_result(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    (registry.local.home.cache / "active-adapters.json").mkdir()
    result = registry.ensure_ready_atomic(required_adapters=["coder"])
    assert not result.success and "active-adapters.json" in result.error_message
    assert not registry.models.path(registry.models.get("bitnet-tiny")).exists()


def test_sync_into_unwritable_cache_is_a_clear_error_and_all_or_nothing(
    world: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registry, chain, store = world
    registry.sync_all()
    cache = registry.local.home.cache
    before = {p.name: p.read_text() for p in cache.glob("registry-*.json")}
    chain.entries.append(
        _entry(store, b"new data", id="fresh", kind="dataset", version=1, approved_height=9)
    )
    chain.entries.append(
        _entry(
            store,
            _bundle(tmp_path, "m2", b"N" * 10),
            id="other",
            kind="model",
            version=1,
        )
    )
    _read_only(monkeypatch, "registry-adapter.json")  # the last of the three lists
    with pytest.raises(StorageWriteError, match="registry-adapter.json"):
        registry.sync_all()
    after = {p.name: p.read_text() for p in cache.glob("registry-*.json")}
    assert after == before  # the model and dataset lists were put back
    monkeypatch.undo()
    # a file where the cache folder should be: the single-kind sync names the path too
    for p in cache.iterdir():
        p.unlink()
    cache.rmdir()
    cache.write_text("not a folder")
    with pytest.raises(StorageWriteError, match="registry-model.json"):
        registry.models.sync_from_chain()


def test_ensure_ready_atomic_re_hashes_adapters_and_datasets(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    assert registry.ensure_ready_atomic(required_adapters=["coder"], require_dataset="chat").success
    coder = registry.adapters.get("coder")
    weights = registry.adapters.path(coder) / "weights.safetensors"
    weights.write_bytes(b"tampered")
    trusted = registry.ensure_ready_atomic(required_adapters=["coder"], verify=())
    assert trusted.success and trusted.downloaded == ()
    assert weights.read_bytes() == b"tampered"
    checked = registry.ensure_ready_atomic(required_adapters=["coder"], require_dataset="chat")
    assert checked.success and checked.downloaded == (coder.ref,)
    assert weights.read_bytes() == b"B" * 300 and registry.adapters.verify("coder")


def test_find_names_every_kind_when_nothing_matches(world: Any) -> None:
    registry, _, _ = world
    registry.sync_all()
    with pytest.raises(ArtifactNotFound, match="no approved artifact 'nothing'"):
        registry.find("nothing")
    assert registry.find("chat").kind == "dataset"
    assert json.loads((registry.local.home.cache / "registry-dataset.json").read_text())


def test_legacy_cache_files_with_string_versions_read_as_integers(world: Any) -> None:
    """Caches and active lists written while versions were strings still read, as ints."""
    registry, _, _ = world
    registry.sync_all()
    cache = registry.local.home.cache
    legacy = [{**r.to_dict(), "version": str(r.version)} for r in registry.adapters.records()]
    (cache / "registry-adapter.json").write_text(json.dumps(legacy))
    (cache / "active-adapters.json").write_text(json.dumps({"coder": "1"}))
    assert {r.version for r in registry.adapters.records() if r.id == "coder"} == {1, 2}
    assert registry.adapters.active() == {"coder": 1}
    (cache / "active-adapters.json").write_text(json.dumps({"coder": "1.0"}))
    with pytest.raises(RegistryError, match="malformed"):
        registry.adapters.active()
