"""TieredStore: machines' blockstores sharing content through real Kubo nodes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kubo import KuboNode, fault_proxy, kubo_node

from r3mes.storage.blockstore import Blockstore, NotPinned
from r3mes.storage.errors import BlockNotFound, CidMismatch, StorageError
from r3mes.storage.kubo import KuboClient, RetryPolicy
from r3mes.storage.multiformats import Cid, parse_cid
from r3mes.storage.tiered import TieredStore, open_store
from r3mes.storage.unixfs import compute_cid

DATA = bytes(range(256)) * 3000  # 768,000 bytes: 3 leaves
FAST = RetryPolicy(attempts=2, base_delay=0.0)


def _tiered(root: Path, url: str, **kw: object) -> TieredStore:
    timeout = float(kw.pop("timeout", 5.0))  # type: ignore[arg-type]
    retry = kw.pop("retry", FAST)
    return TieredStore(Blockstore(root), KuboClient(url, timeout=timeout, retry=retry))  # type: ignore[arg-type]


def _v1(cid: str) -> str:
    parsed = parse_cid(cid)
    return str(Cid(version=1, codec=parsed.codec, digest=parsed.digest))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[KuboNode]:
    with kubo_node(tmp_path / "kubo") as running:
        yield running


def test_content_added_on_one_machine_is_read_on_another(node: KuboNode, tmp_path: Path) -> None:
    with fault_proxy(node.api_url) as (url, state):
        miner = _tiered(tmp_path / "miner", url)
        validator = _tiered(tmp_path / "validator", url)
        cid = miner.add_bytes(DATA)
        assert cid == compute_cid(DATA, cid_version=1)
        assert _v1(cid) in node.pins() and miner.local.is_pinned(cid)
        assert not validator.has(cid)
        assert validator.get_bytes(cid) == DATA
        # cached locally, unpinned: the next read needs no network, gc may reclaim it
        assert validator.has(cid) and not validator.local.is_pinned(cid)
        before = len(state.requests)
        assert validator.get_bytes(cid) == DATA
        assert len(state.requests) == before
        miner.unpin(cid)
        assert not miner.local.is_pinned(cid) and _v1(cid) not in node.pins()


def test_two_kubo_nodes_share_an_update_over_bitswap(tmp_path: Path) -> None:
    """A miner adds through node A; a validator on node B fetches it by CID, verifying blocks."""
    with kubo_node(tmp_path / "a") as a, kubo_node(tmp_path / "b") as b:
        b.connect(a)
        miner = _tiered(tmp_path / "miner", a.api_url)
        validator = _tiered(tmp_path / "validator", b.api_url, timeout=20.0)
        for size in (1, 300_000, len(DATA) * 2):
            payload = (DATA * 2)[:size]
            cid = miner.add_bytes(payload)
            assert validator.get_bytes(cid) == payload
            assert validator.local.verify(cid)


@pytest.mark.slow
def test_fetch_survives_node_b_stopping_mid_fetch(tmp_path: Path) -> None:
    """Node B's daemon stops while the validator reads; after a restart the retry verifies."""
    with kubo_node(tmp_path / "a") as a, kubo_node(tmp_path / "b") as b:
        b.connect(a)
        payload = bytes(range(251)) * 40_000  # ~10 MB, 39 leaves
        cid = _tiered(tmp_path / "miner", a.api_url).add_bytes(payload)
        validator = _tiered(
            tmp_path / "validator",
            b.api_url,
            timeout=10.0,
            # Kubo restarting on a loaded box can take tens of seconds: up to ~2 min of retries
            retry=RetryPolicy(attempts=240, base_delay=0.25, max_delay=0.5),
        )

        def bounce() -> None:
            time.sleep(0.05)
            b.stop()
            time.sleep(1.0)
            b.start()
            b.connect(a)

        thread = threading.Thread(target=bounce)
        thread.start()
        try:
            assert validator.get_bytes(cid) == payload
        finally:
            thread.join()
        assert validator.local.verify(cid)


def test_remote_bytes_that_do_not_match_are_discarded(node: KuboNode, tmp_path: Path) -> None:
    cid = _tiered(tmp_path / "seed", node.api_url).add_bytes(DATA)
    with fault_proxy(node.api_url, mode="wrong-bytes") as (url, _state):
        reader = _tiered(tmp_path / "reader", url)
        with pytest.raises(CidMismatch):
            reader.get_bytes(cid)
        assert not reader.has(cid) and reader.local.pins() == []


def test_failed_remote_add_leaves_nothing_pinned(node: KuboNode, tmp_path: Path) -> None:
    with fault_proxy(node.api_url, mode="down-api") as (url, _state):
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


def test_gateway_only_store_reads(node: KuboNode, tmp_path: Path) -> None:
    cid = _tiered(tmp_path / "seed", node.api_url).add_bytes(DATA)
    store = open_store(tmp_path / "local", gateway_url=node.gateway_url)
    assert store.get_bytes(cid) == DATA and store.has(cid)
    store.close()


def test_corrupt_local_block_falls_back_to_the_remote_and_is_repaired(
    node: KuboNode, tmp_path: Path
) -> None:
    with fault_proxy(node.api_url) as (url, state):
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


def test_gc_after_unpin_removes_only_what_r3mes_unpinned(node: KuboNode, tmp_path: Path) -> None:
    """A rolled-back update is unpinned on the shared node; `ipfs repo gc` then removes it
    and nothing else: content R3MES still pins, and pins made outside R3MES, survive."""
    store = _tiered(tmp_path / "local", node.api_url)
    kept = store.add_bytes(DATA)
    rolled_back = store.add_bytes(DATA[::-1])
    outside = KuboClient(node.api_url, timeout=5.0).add_bytes(b"pinned by someone else")
    store.unpin(rolled_back)
    node.ipfs("repo", "gc", "--quiet")
    # the blockstore is keyed by multihash: compare digests, whatever the CID's codec
    have = {parse_cid(c).digest for c in node.ipfs("refs", "local").split()}
    assert parse_cid(kept).digest in have and parse_cid(outside).digest in have
    assert parse_cid(rolled_back).digest not in have
    assert {_v1(kept), _v1(outside)} <= node.pins()
