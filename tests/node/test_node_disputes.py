"""A dispute on a devnet, played by the roles themselves: a lying validator rejects an honest
miner's update, the miner challenges, both answer the ledger's bisection from their own
traces, an uninvolved validator referees the one step, and the liar is slashed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.devnet import running_devnet, tiny_spec
from support.wait import step_until

from r3mes.chain.msgs import RegisterNode
from r3mes.node.launch import RoleLaunch, build_miner, build_validator
from r3mes.node.localnet.setup import passphrase
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.paths import Home
from r3mes.spec.bisection import max_rounds
from r3mes.work.profile import WorkProfile
from r3mes.work.task import HyperParams

STEPS = 4


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Home, str]]:
    profile = WorkProfile(
        hyper=HyperParams(lr="0.005", steps=STEPS, batch_size=2, seq_len=32, topk_ppm=50_000),
        eval_chunks=4,
        settle_rounds=1,
    )
    spec = tiny_spec(tmp_path, miners=1, profile=profile, validators=2, quorum=1, per_submission=1)
    with running_devnet(spec) as running:
        yield running


def _launch(home: Home, url: str, name: str) -> RoleLaunch:
    return RoleLaunch(
        name=name, home=home, chain_url=url, key_name=name, passphrase=passphrase(home)
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_an_honest_miner_wins_a_dispute_against_a_lying_validator(
    chain: tuple[Home, str],
) -> None:
    home, url = chain
    miner = build_miner(
        _launch(home, url, "miner-1"), retry=RetryPolicy(max_retries=1, initial_delay=0.2)
    )
    liar = build_validator(_launch(home, url, "validator-1"), lie=True)
    referee = build_validator(_launch(home, url, "validator-2"))
    client = miner.client
    roles = (miner, liar, referee)
    for role in roles:
        role.on_start()
    try:
        # the liar bonds stake (so it is drawn almost always, and has something to lose)
        client.sign_and_broadcast(
            liar.key, [RegisterNode(creator=liar.address, role="validator", stake=500)]
        )

        def liar_rejected() -> list[int]:
            return [
                s.id
                for s in client.submissions()
                if s.miner == miner.address and s.status == "rejected"
            ]

        step_until(
            lambda: bool(liar_rejected()),
            miner.step,
            liar.step,
            referee.step,
            timeout=200,
            what="a rejection by the liar",
        )
        sid = liar_rejected()[0]
        assert client.submission(sid).assigned == [liar.address]

        def resolved() -> bool:
            d = client.dispute(sid)
            return d is not None and d["status"] == "resolved"

        step_until(resolved, miner.step, liar.step, referee.step, timeout=200, what="dispute")
        d = client.dispute(sid)
        assert d is not None
        assert (d["claimant"], d["respondent"], d["winner"]) == (
            miner.address,
            liar.address,
            "claimant",
        )
        assert d["referees"] == [referee.address] and d["votes"][0][0] == referee.address
        assert d["hi"] == d["lo"] + 1 and d["rounds"] <= max_rounds(STEPS)
        assert client.account(liar.address).slashed == client.params().slash_amount
        assert client.account(miner.address).slashed == 0
        assert client.submission(sid).status == "verified"  # turned over
        print(f"dispute {sid}: narrowed to step {d['lo']} in {d['rounds']} rounds")
    finally:
        for role in roles:
            role.on_stop()
