"""The ledger enforces the same shard rule the miners follow (both use r3mes.spec.shards)."""

from __future__ import annotations

import json
from dataclasses import replace

from chain.chain_harness import Harness, key, make_genesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3mes.chain.client_types import RoundInfo, from_json
from r3mes.chain.codes import Code
from r3mes.chain.errors import TxInvalid
from r3mes.chain.handlers import submit_gradient
from r3mes.chain.ledger import BlockContext
from r3mes.chain.msgs import RegisterNode, SubmitGradient
from r3mes.chain.pow import solve_pow
from r3mes.chain.state import Node, Round, WorkingState, genesis_state, node_key
from r3mes.chain.views import round_json
from r3mes.node.miner.parts import mining_task
from r3mes.spec.shards import round_shard

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _ledger_accepts(state: WorkingState, miner: str, rnd: Round, shard: int) -> int:
    """The code the ledger's handler gives `miner` submitting `shard` (0 = accepted)."""
    msg = SubmitGradient(
        creator=miner, round=rnd.number, shard=shard, cid="bafyu", digest="ab" * 32
    )
    ctx = BlockContext(chain_id="r3mes-test-1", height=rnd.open_height, time_ms=2_000_000)
    try:
        submit_gradient(state.overlay(), msg, ctx)
    except TxInvalid as exc:
        return exc.code
    return 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.binary(min_size=32, max_size=32),
    miner_tail=st.text(alphabet=_BECH32, min_size=38, max_size=38),
    n_shards=st.integers(min_value=1, max_value=40),
    claim_bits=st.integers(min_value=0, max_value=2**40 - 1),
)
def test_the_miners_shard_is_the_one_the_ledger_accepts(
    seed: bytes, miner_tail: str, n_shards: int, claim_bits: int
) -> None:
    miner = "remes1" + miner_tail
    claimed = sorted(s for s in range(n_shards) if claim_bits >> s & 1)
    genesis = genesis_state(make_genesis(pow_difficulty=0, shards_per_round=n_shards))
    state = genesis.overlay()
    state.nodes[node_key("miner", miner)] = Node(
        address=miner, role="miner", endpoint="", stake=10, registered_height=1
    )
    rnd = Round(
        number=1,
        open_height=1,
        close_height=5,
        seed=seed.hex(),
        base_model_cid="bafymodel",
        dataset_cid="bafydata",
        claims=tuple((s, f"remes1other{s}") for s in claimed),
    )
    state.rounds[1] = rnd
    # the miner reads the round as the REST route serves it, through the client's type
    info = from_json(RoundInfo, json.loads(json.dumps(round_json(rnd, genesis))))
    task = mining_task(info, miner=miner)
    free = [s for s in range(n_shards) if s not in claimed]
    if not free:
        assert task is not None  # every shard taken: the miner still has a task ...
        assert _ledger_accepts(state, miner, rnd, task.details["shard"]) == Code.DUPLICATE
        return  # ... which the ledger refuses as a duplicate shard
    assert task is not None
    mine = task.details["shard"]
    accepted = [s for s in free if _ledger_accepts(state, miner, rnd, s) == 0]
    assert accepted == [mine]
    assert all(_ledger_accepts(state, miner, rnd, s) == Code.WRONG_SHARD for s in free if s != mine)
    # a closed round gives the miner no task and the ledger no acceptance
    closed = replace(rnd, status="closed")
    state.rounds[1] = closed
    assert mining_task(replace(info, status="closed"), miner=miner) is None
    assert _ledger_accepts(state, miner, closed, mine) == Code.WRONG_ROUND


def _submit(h: Harness, miner: object, shard: int) -> int:
    msg = SubmitGradient(
        creator=miner.address,  # type: ignore[attr-defined]
        round=h.state.current_round,
        shard=shard,
        cid="bafyupdate",
        digest="ab" * 32,
    )
    solved = solve_pow(msg, chain_id=h.state.chain_id, difficulty=h.state.params.pow_difficulty)
    return h.send(miner, solved).code  # type: ignore[arg-type]


def test_ledger_accepts_only_the_assigned_shard_with_probing_past_claims() -> None:
    h = Harness(make_genesis(round_length=50, shards_per_round=3))
    h.block()
    miners = [key(i) for i in range(1, 5)]
    for m in miners:
        assert h.send(m, RegisterNode(creator=m.address, role="miner", stake=10)).code == 0
    rnd = h.state.rounds[1]
    for m in miners[:3]:
        claimed = {s for s, _ in h.state.rounds[1].claims}
        expected = round_shard(seed_hex=rnd.seed, miner=m.address, n_shards=3, claimed=claimed)
        free_wrong = [s for s in range(3) if s not in claimed and s != expected]
        for wrong in free_wrong:  # a free shard that is not this miner's
            assert _submit(h, m, wrong) == Code.WRONG_SHARD
        assert _submit(h, m, expected) == 0
    assert sorted(s for s, _ in h.state.rounds[1].claims) == [0, 1, 2]
    assert _submit(h, miners[3], 0) == Code.DUPLICATE  # every shard is taken
