"""The ABCI 2.0-shaped application: FinalizeBlock computes, Commit persists."""

from __future__ import annotations

from pathlib import Path

import pytest
from chain.chain_harness import CHAIN_ID, key, make_genesis

from r3mes.chain.application import LedgerApplication
from r3mes.chain.errors import ChainError
from r3mes.chain.msgs import TransferCredits
from r3mes.chain.store import BlockStore
from r3mes.chain.transition import make_block
from r3mes.chain.tx import build_tx

A, B = key(1), key(2)


def test_finalize_then_commit_and_info(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "c.db")
    store.init_genesis(make_genesis())
    app = LedgerApplication(store)
    genesis_hash = app.info().last_block_app_hash
    assert app.info().last_block_height == 0 and app.init_chain(make_genesis()) == genesis_hash
    raw = build_tx(
        [TransferCredits(creator=A.address, to=B.address, amount=5)],
        key=A,
        chain_id=CHAIN_ID,
        account_number=1,
        sequence=0,
    )
    assert app.check_tx(raw).code == 0
    txs = app.prepare_proposal([raw, raw + b"", b"x" * 10], max_txs=2, max_bytes=10_000)
    assert len(txs) == 2
    block = make_block(app.state, txs=[raw], time_ms=2_000_000)
    assert app.process_proposal(block)
    wrong = make_block(app.state, txs=[raw], time_ms=2_000_000)
    assert not app.process_proposal(type(wrong)(header=wrong.header, txs=()))
    result = app.finalize_block(block)
    assert result.tx_results[0].code == 0
    assert app.info().last_block_height == 0  # nothing committed yet
    assert store.height() == 0
    assert app.commit() == 0
    assert app.info() == type(app.info())(1, 1, result.app_hash)
    assert store.height() == 1
    with pytest.raises(ChainError, match="without a finalized block"):
        app.commit()
    assert app.prepare_proposal([raw] * 5, max_txs=10, max_bytes=len(raw) * 3) == [raw] * 3
