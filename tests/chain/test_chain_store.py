"""SQLite store and the embedded engine, in process."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from chain.chain_harness import CHAIN_ID, key, make_genesis

from r3mes.chain.codes import Code
from r3mes.chain.engine import DevnetEngine, EngineConfig
from r3mes.chain.errors import StoreError
from r3mes.chain.msgs import TransferCredits
from r3mes.chain.rpc_query import parse_query
from r3mes.chain.store import BlockStore
from r3mes.chain.tx import build_tx

A, B = key(1), key(2)


def transfer(engine: DevnetEngine, seq: int, amount: int = 1) -> bytes:
    acc = engine.state.accounts[A.address]
    msg = TransferCredits(creator=A.address, to=B.address, amount=amount)
    return build_tx([msg], key=A, chain_id=CHAIN_ID, account_number=acc.number, sequence=seq)


def engine_at(tmp_path: Path) -> DevnetEngine:
    store = BlockStore(tmp_path / "chain.db")
    store.init_genesis(make_genesis())
    return DevnetEngine(store, EngineConfig(block_interval_s=0.05))


def test_mempool_sequences_blocks_and_restart(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    raws = [transfer(engine, seq) for seq in range(3)]
    assert [engine.submit(r).code for r in raws] == [0, 0, 0]
    assert engine.submit(raws[0]).code == Code.DUPLICATE
    assert engine.submit(transfer(engine, 7)).code == Code.WRONG_SEQUENCE
    result = engine.produce_block()
    assert [r.code for r in result.tx_results] == [0, 0, 0]
    assert engine.mempool_size() == 0
    engine.produce_block()  # empty blocks advance height
    stored = engine.store.tx(result.tx_results[1].hash)
    assert stored is not None and stored.height == 1 and stored.index == 1 and stored.code == 0
    sender = parse_query(f"message.sender='{A.address}'")
    page, total = engine.store.search_txs(sender, limit=2, offset=1)
    assert total == 3 and [t.hash for t in page][0] == stored.hash and len(page) == 2
    app_hash, height = engine.app_hash, engine.state.height
    engine.store.close()
    reopened = DevnetEngine(BlockStore(tmp_path / "chain.db"))
    assert (reopened.state.height, reopened.app_hash) == (height, app_hash)
    assert all(stored == recomputed for _, stored, recomputed in reopened.store.replay())
    assert reopened.state.accounts[B.address].balance == 1003
    results = reopened.store.block_results(1)
    assert results is not None and len(results["txs_results"]) == 3


def test_wait_for_tx_wakes_on_commit(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    raw = transfer(engine, 0)
    digest = engine.submit(raw).hash
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        found = engine.wait_for_tx(digest, timeout_s=60)
        assert found is not None and found.code == 0
        assert engine.wait_for_height(found.height + 2, timeout_s=60)
    finally:
        stop.set()
        thread.join(30)
    assert engine.wait_for_tx("00" * 32, timeout_s=0.05) is None


def test_mempool_rechecks_after_block(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    big = transfer(engine, 0, amount=900)
    assert engine.submit(big).code == 0
    assert engine.submit(transfer(engine, 1, amount=900)).code == 0  # passes check, fails deliver
    result = engine.produce_block()
    assert [r.code for r in result.tx_results] == [0, Code.INSUFFICIENT_FUNDS]
    assert engine.state.accounts[A.address].sequence == 2


def stored_entries(path: Path) -> dict[str, bytes]:
    db = sqlite3.connect(path)
    try:
        return {k: bytes(v) for k, v in db.execute("SELECT key, value FROM entries")}
    finally:
        db.close()


def test_commit_writes_only_the_changed_entries(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    engine.produce_block()  # opens round 1
    before = stored_entries(tmp_path / "chain.db")
    engine.produce_block()  # empty, mid-round: only the height/time/hash scalars change
    assert set(engine.state.delta) == {"meta"}
    assert engine.submit(transfer(engine, 0)).code == 0
    engine.produce_block()
    assert set(engine.state.delta) == {"meta", f"accounts/{A.address}", f"accounts/{B.address}"}
    after = stored_entries(tmp_path / "chain.db")
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == set(engine.state.delta)
    # What is stored is exactly the committed state, and rebuilds to the same app hash.
    assert after == dict(engine.state.entries())
    assert BlockStore(tmp_path / "chain.db").load_state().app_hash() == engine.app_hash


def test_corrupt_state_is_detected(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    engine.produce_block()
    engine.store.close()
    db = sqlite3.connect(tmp_path / "chain.db")
    db.execute("UPDATE head SET app_hash = 'ff'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="corrupt"):
        BlockStore(tmp_path / "chain.db").load_state()
    # A well-formed entry with a different value (a minted balance) breaks the app hash.
    key = f"accounts/{A.address}"
    row = json.loads(stored_entries(tmp_path / "chain.db")[key])
    row["balance"] += 10**6
    db = sqlite3.connect(tmp_path / "chain.db")
    db.execute("UPDATE head SET app_hash = ?", (engine.app_hash,))
    db.execute("UPDATE entries SET value = ? WHERE key = ?", (json.dumps(row).encode(), key))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="corrupt"):
        BlockStore(tmp_path / "chain.db").load_state()


def test_store_from_an_older_release_is_refused_with_advice(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE state (id INTEGER PRIMARY KEY, height INTEGER, data BLOB)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="--overwrite"):
        BlockStore(tmp_path / "old.db")


def test_different_genesis_refused(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "c.db")
    store.init_genesis(make_genesis())
    with pytest.raises(StoreError, match="different chain"):
        store.init_genesis(make_genesis(round_length=7))
    with pytest.raises(StoreError, match="devnet init"):
        BlockStore(tmp_path / "empty.db").genesis()
