"""The SQLite transaction journal: state machine, durability, stats queries."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r3mes.node.errors import ValidationError
from r3mes.node.miner.journal import Journal, TxState, transition_allowed


def test_happy_path_and_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.begin(tx_id="a", round_id=1, task={"task_id": "t"})
    for state in (TxState.TRAINING, TxState.IPFS_UPLOAD, TxState.BLOCKCHAIN_SUBMIT):
        journal.advance("a", state)
    journal.advance("a", TxState.TASK_COMPLETE, chain_tx="H")
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite")
    record = reopened.get("a")
    assert record is not None and record.state is TxState.TASK_COMPLETE
    assert record.chain_tx == "H" and record.task == {"task_id": "t"}
    assert [r.tx_id for r in reopened.unresolved()] == ["a"]
    reopened.advance("a", TxState.COMMITTED)
    assert reopened.unresolved() == []
    assert reopened.counts()["COMMITTED"] == 1
    assert reopened.mean_latency() is not None


def test_illegal_transitions_are_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.begin(tx_id="a", round_id=1, task={})
    with pytest.raises(ValidationError, match="illegal transition"):
        journal.advance("a", TxState.BLOCKCHAIN_SUBMIT)
    journal.advance("a", TxState.FAILED, error="x")
    with pytest.raises(ValidationError):
        journal.advance("a", TxState.TRAINING)
    with pytest.raises(ValidationError, match="already exists"):
        journal.begin(tx_id="a", round_id=1, task={})
    with pytest.raises(ValidationError, match="unknown transaction"):
        journal.advance("zzz", TxState.TRAINING)
    with pytest.raises(ValidationError, match="unknown journal fields"):
        journal.advance("a", TxState.TRAINING, round_id=9)
    assert journal.get("a") is not None and journal.get("a").state is TxState.FAILED  # type: ignore[union-attr]


def test_oversized_task_rejected(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    with pytest.raises(ValidationError, match="too large"):
        journal.begin(tx_id="a", round_id=1, task={"x": "y" * 100_000})
    assert journal.recent() == []


@given(st.sampled_from(list(TxState)), st.sampled_from(list(TxState)))
def test_terminal_states_are_final(current: TxState, target: TxState) -> None:
    if current.terminal:
        assert not transition_allowed(current, target)
    if target is TxState.COMMITTED and current is not TxState.TASK_COMPLETE:
        assert not transition_allowed(current, target)
