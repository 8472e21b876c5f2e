"""check_tx refuses what it can already know is invalid, so a bad tx never uses a sequence."""

from __future__ import annotations

from pathlib import Path

import pytest
from chain.chain_harness import CHAIN_ID, Harness, key, make_genesis

from r3mes.chain.codes import Code
from r3mes.chain.engine import DevnetEngine, EngineConfig
from r3mes.chain.msgs import MAX_U64, Faucet, Msg, RegisterNode, SubmitGradient, TransferCredits
from r3mes.chain.pow import solve_pow
from r3mes.chain.store import BlockStore
from r3mes.chain.transition import check_tx, simulate_tx
from r3mes.chain.tx import build_tx
from r3mes.spec.shards import round_shard

A, B = key(1), key(2)  # make_genesis funds each with 1000


def _bad_msgs() -> list[tuple[list[Msg], Code]]:
    over = TransferCredits(creator=A.address, to=B.address, amount=1001)
    huge = TransferCredits(creator=A.address, to=B.address, amount=MAX_U64)
    half = TransferCredits(creator=A.address, to=B.address, amount=600)
    faucet = Faucet(creator=A.address, to=A.address, amount=1_000_001)
    stake = RegisterNode(creator=A.address, role="miner", stake=1001)
    return [
        ([over], Code.INSUFFICIENT_FUNDS),
        ([huge], Code.INSUFFICIENT_FUNDS),
        ([half, half], Code.INSUFFICIENT_FUNDS),  # together they spend more than the balance
        ([stake], Code.INSUFFICIENT_FUNDS),
        ([faucet], Code.INVALID),
    ]


@pytest.mark.parametrize(("msgs", "code"), _bad_msgs())
def test_check_tx_refuses_what_the_state_already_rules_out(msgs: list[Msg], code: Code) -> None:
    h = Harness(make_genesis(devnet=True))
    result = check_tx(h.state, h.sign(A, msgs))
    assert result.code == code, result.log
    assert result.log  # says why


def test_the_faucet_is_refused_at_admission_off_devnets() -> None:
    h = Harness(make_genesis(devnet=False, pow_difficulty=16))
    msg = Faucet(creator=A.address, to=A.address, amount=1)
    assert check_tx(h.state, h.sign(A, [msg])).code == Code.DEVNET_ONLY


def test_spending_the_whole_balance_is_admitted() -> None:
    h = Harness()
    msg = TransferCredits(creator=A.address, to=B.address, amount=1000)
    assert check_tx(h.state, h.sign(A, [msg])).code == 0


def test_a_refused_transfer_does_not_use_a_sequence_number(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "c.db")
    store.init_genesis(make_genesis())
    engine = DevnetEngine(store, EngineConfig(block_interval_s=0.1))

    def tx(amount: int, sequence: int) -> bytes:
        msg = TransferCredits(creator=A.address, to=B.address, amount=amount)
        return build_tx([msg], key=A, chain_id=CHAIN_ID, account_number=1, sequence=sequence)

    assert engine.submit(tx(MAX_U64, 0)).code == Code.INSUFFICIENT_FUNDS
    assert engine.submit(tx(5000, 0)).code == Code.INSUFFICIENT_FUNDS
    assert engine.mempool_size() == 0
    engine.produce_block()
    assert engine.state.accounts[A.address].sequence == 0  # nothing was committed
    assert engine.submit(tx(7, 0)).code == 0  # sequence 0 is still the next one
    engine.produce_block()
    assert engine.state.accounts[A.address].sequence == 1
    assert engine.state.accounts[B.address].balance == 1007


def test_simulation_answers_what_delivery_would_and_writes_nothing() -> None:
    h = Harness(make_genesis(round_length=5))
    h.block()
    before = h.state
    app_hash = before.app_hash()
    ok = simulate_tx(
        h.state,
        h.sign(A, [TransferCredits(creator=A.address, to=B.address, amount=5)]),
        time_ms=h.time_ms,
    )
    assert ok.code == 0 and [e.type for e in ok.events] == ["message", "transfer"]
    update = SubmitGradient(creator=A.address, round=1, shard=0, cid="bafyu", digest="ab" * 32)
    solved = solve_pow(update, chain_id=CHAIN_ID, difficulty=h.state.params.pow_difficulty)
    refused = simulate_tx(h.state, h.sign(A, [solved]), time_ms=h.time_ms)
    assert refused.code == Code.NOT_PERMITTED and "not a registered miner" in refused.log
    assert h.state is before and before.app_hash() == app_hash
    assert before.accounts[A.address].sequence == 0 and before.accounts[B.address].balance == 1000


def test_simulation_sees_the_round_the_next_block_opens() -> None:
    h = Harness(make_genesis(round_length=3))
    assert h.send(A, RegisterNode(creator=A.address, role="miner", stake=10)).code == 0
    h.advance_to_height(3)  # block 4 opens round 2 and closes round 1
    for number, expected in ((1, Code.WRONG_ROUND), (2, 0)):
        rnd_seed = h.state.last_block_hash if number == 2 else h.state.rounds[1].seed
        shard = round_shard(seed_hex=rnd_seed, miner=A.address, n_shards=4, claimed=set())
        msg = SubmitGradient(
            creator=A.address, round=number, shard=shard, cid="bafyu", digest="ab" * 32
        )
        solved = solve_pow(msg, chain_id=CHAIN_ID, difficulty=h.state.params.pow_difficulty)
        result = simulate_tx(h.state, h.sign(A, [solved]), time_ms=h.time_ms)
        assert result.code == expected, result.log
