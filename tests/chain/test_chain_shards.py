"""The ledger's shard rule agrees with the miners' (r3mes.work.data.assign_shard)."""

from __future__ import annotations

import random

from chain_harness import Harness, key, make_genesis

from r3mes.chain.codes import Code
from r3mes.chain.msgs import RegisterNode, SubmitGradient
from r3mes.chain.pow import solve_pow
from r3mes.chain.shards import assigned_shard, preferred_shard, seed_u64
from r3mes.node.tasks import round_seed
from r3mes.work.data import assign_shard
from r3mes.work.data import preferred_shard as work_preferred


def test_rule_matches_the_miners_rule_on_random_inputs() -> None:
    rng = random.Random(2024)
    for _ in range(2000):
        seed_hex = rng.randbytes(32).hex()
        miner = (
            key(rng.randrange(1, 10**9)).address
            if rng.random() < 0.1
            else (
                "remes1"
                + "".join(rng.choice("qpzry9x8gf2tvdw0s3jn54khce6mua7l") for _ in range(38))
            )
        )
        n_shards = rng.randrange(1, 70)
        claimed = frozenset(rng.sample(range(n_shards), rng.randrange(0, n_shards + 1)))
        assert seed_u64(seed_hex) == round_seed(seed_hex)
        seed = seed_u64(seed_hex)
        assert preferred_shard(seed=seed, miner=miner, n_shards=n_shards) == work_preferred(
            seed=seed, miner=miner, n_shards=n_shards
        )
        ours = assigned_shard(seed_hex=seed_hex, miner=miner, n_shards=n_shards, claimed=claimed)
        theirs = assign_shard(seed=seed, miner=miner, n_shards=n_shards, claimed=claimed)
        assert ours == theirs
    assert seed_u64("") == round_seed("") == 0


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
        expected = assigned_shard(seed_hex=rnd.seed, miner=m.address, n_shards=3, claimed=claimed)
        free_wrong = [s for s in range(3) if s not in claimed and s != expected]
        for wrong in free_wrong:  # a free shard that is not this miner's
            assert _submit(h, m, wrong) == Code.WRONG_SHARD
        assert _submit(h, m, expected) == 0
    assert sorted(s for s, _ in h.state.rounds[1].claims) == [0, 1, 2]
    assert _submit(h, miners[3], 0) == Code.DUPLICATE  # every shard is taken
