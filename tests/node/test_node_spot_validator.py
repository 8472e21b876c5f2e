"""Spot checks in the running roles: a real miner publishes and commits its step trace, a
validator spot-checks it once the next round opens (its seed draws the sample), and the
work is verified having re-run only the sampled steps; an untraced cheat still gets full
re-execution and is rejected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.devnet import running_devnet, tiny_spec
from support.wait import step_until

from r3mes.node.launch import RoleLaunch, build_miner, build_validator
from r3mes.node.localnet.setup import passphrase
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.paths import Home
from r3mes.work.profile import WorkProfile
from r3mes.work.task import HyperParams
from r3mes.work.trace import decode_trace


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Home, str]]:
    profile = WorkProfile(
        hyper=HyperParams(lr="0.005", steps=4, batch_size=2, seq_len=32, topk_ppm=50_000),
        eval_chunks=4,
        settle_rounds=1,
    )
    spec = tiny_spec(tmp_path, miners=2, profile=profile, attestation_rounds=50)
    with running_devnet(spec) as running:
        yield running


def _launch(home: Home, url: str, name: str) -> RoleLaunch:
    return RoleLaunch(
        name=name, home=home, chain_url=url, key_name=name, passphrase=passphrase(home)
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_traced_submission_is_spot_checked_and_a_cheat_is_not_let_through(
    chain: tuple[Home, str],
) -> None:
    home, url = chain
    retry = RetryPolicy(max_retries=1, initial_delay=0.2)
    honest = build_miner(_launch(home, url, "miner-1"), retry=retry)
    cheat = build_miner(_launch(home, url, "miner-2"), retry=retry, cheat="random")
    validator = build_validator(_launch(home, url, "validator-1"), spot_ppm=250_000)
    client = honest.client
    for role in (honest, cheat, validator):
        role.on_start()
    try:

        def judged() -> bool:
            subs = client.submissions()
            mine = [s for s in subs if s.miner == honest.address and s.status == "verified"]
            bad = [s for s in subs if s.miner == cheat.address and s.status == "rejected"]
            return bool(mine) and bool(bad)

        step_until(judged, honest.step, cheat.step, validator.step, timeout=240, what="verdicts")
        subs = client.submissions()
        mine = next(s for s in subs if s.miner == honest.address and s.status == "verified")
        assert mine.trace_cid and mine.trace_root
        trace = decode_trace(validator.store.get_bytes(mine.trace_cid, max_size=64 << 20))
        assert trace.root == mine.trace_root and trace.steps == 4
        reason = validator.verdicts.reason(mine.id) or ""
        assert reason.startswith("spot check: 1 of 4 segments"), reason
        # the spot check waited for the next round: its seed did not exist at submission
        assert client.current_round().number > mine.round
        bad = next(s for s in subs if s.miner == cheat.address and s.status == "rejected")
        assert not bad.trace_cid  # the random cheat publishes no trace: full re-execution
        assert "spot check" not in (validator.verdicts.reason(bad.id) or "")
        assert validator.spot_rate() == 250_000
    finally:
        for role in (honest, cheat, validator):
            role.on_stop()
