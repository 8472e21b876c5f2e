"""TieredStore: two machines' blockstores sharing content through one Kubo node."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.kubo_server import kubo_server

from r3mes.storage.blockstore import Blockstore, NotPinned
from r3mes.storage.errors import BlockNotFound, CidMismatch, StorageError
from r3mes.storage.kubo import KuboClient, RetryPolicy
from r3mes.storage.tiered import TieredStore, open_store
from r3mes.storage.unixfs import compute_cid

DATA = bytes(range(256)) * 3000  # 768,000 bytes: 3 leaves
FAST = RetryPolicy(attempts=2, base_delay=0.0)


def _tiered(root: Path, url: str) -> TieredStore:
    return TieredStore(Blockstore(root), KuboClient(url, timeout=5.0, retry=FAST))


def test_content_added_on_one_machine_is_read_on_another(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "kubo") as (url, state):
        miner = _tiered(tmp_path / "miner", url)
        validator = _tiered(tmp_path / "validator", url)
        cid = miner.add_bytes(DATA)
        assert cid == compute_cid(DATA, cid_version=1)
        assert state.store.is_pinned(cid) and miner.local.is_pinned(cid)
        assert not validator.has(cid)
        assert validator.get_bytes(cid) == DATA
        # cached locally, unpinned: the next read needs no network, gc may reclaim it
        assert validator.has(cid) and not validator.local.is_pinned(cid)
        before = len(state.requests)
        assert validator.get_bytes(cid) == DATA
        assert len(state.requests) == before
        miner.unpin(cid)
        assert not miner.local.is_pinned(cid) and not state.store.is_pinned(cid)


def test_remote_bytes_that_do_not_match_are_discarded(tmp_path: Path) -> None:
    good = Blockstore(tmp_path / "seed")
    cid = good.add_bytes(DATA)
    with kubo_server(tmp_path / "kubo", mode="wrong-bytes") as (url, state):
        state.store.add_bytes(DATA)
        reader = _tiered(tmp_path / "reader", url)
        with pytest.raises(CidMismatch):
            reader.get_bytes(cid)
        assert not reader.has(cid) and reader.local.pins() == []


def test_failed_remote_add_leaves_nothing_pinned(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "kubo", mode="down-api") as (url, _state):
        store = _tiered(tmp_path / "local", url)
        with pytest.raises(StorageError):
            store.add_bytes(DATA)
        assert store.local.pins() == []
        # content pinned before the failed add keeps its pin
        cid = store.local.add_bytes(DATA)
        with pytest.raises(StorageError):
            store.add_bytes(DATA)
        assert store.local.is_pinned(cid)


def test_local_only_store_behaves_as_the_blockstore(tmp_path: Path) -> None:
    store = open_store(tmp_path / "blocks")
    assert store.remote is None
    cid = store.add_bytes(b"hello")
    assert store.get_bytes(cid) == b"hello"
    store.unpin(cid)
    with pytest.raises(NotPinned):
        store.unpin(cid)
    with pytest.raises(BlockNotFound):
        store.get_bytes(compute_cid(b"absent", cid_version=1))


def test_gateway_only_store_reads(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "kubo") as (url, state):
        cid = state.store.add_bytes(DATA)
        store = open_store(tmp_path / "local", gateway_url=url)
        assert store.get_bytes(cid) == DATA and store.has(cid)
        store.close()


def test_corrupt_local_block_falls_back_to_the_remote_and_is_repaired(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "kubo") as (url, state):
        store = _tiered(tmp_path / "local", url)
        cid = store.add_bytes(DATA)
        leaf = next((tmp_path / "local" / "data").rglob("bafkrei*"))
        damaged = bytearray(leaf.read_bytes())
        damaged[0] ^= 1
        leaf.write_bytes(bytes(damaged))
        with pytest.raises(CidMismatch):
            store.local.get_bytes(cid)
        before = len(state.requests)
        assert store.get_bytes(cid) == DATA
        assert len(state.requests) == before + 1  # one remote read
        assert store.local.verify(cid) and store.local.is_pinned(cid)
        assert store.get_bytes(cid) == DATA and len(state.requests) == before + 1
    # without a remote the damage is reported, never returned
    leaf.write_bytes(bytes(damaged))
    with pytest.raises(CidMismatch):
        TieredStore(Blockstore(tmp_path / "local")).get_bytes(cid)
