"""Roles on separate machines: each has its own empty blockstore and shares content only
through one Kubo node (the test's Kubo-API server), over a real devnet."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.devnet import running_devnet
from support.kubo_server import kubo_server

from r3mes.node.journal import TxState
from r3mes.node.launch import RoleLaunch, build_role
from r3mes.node.miner import Miner
from r3mes.node.network_setup import NetworkSpec, passphrase
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.node.validator import Validator
from r3mes.paths import Home
from r3mes.storage.tiered import TieredStore


@pytest.fixture
def genesis(tmp_path: Path) -> Iterator[tuple[Home, str]]:
    spec = NetworkSpec(
        home=Home(root=tmp_path / "genesis"),
        miners=1,
        round_blocks=10,
        serving=False,
        base_model="tiny",
        dataset_chars=40_000,
    )
    with running_devnet(spec) as running:
        yield running


def _until(step: Callable[[], bool], done: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        if not step():
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_miner_and_validator_share_updates_only_through_kubo(
    genesis: tuple[Home, str], tmp_path: Path
) -> None:
    home, chain = genesis
    # the genesis machine's blockstore is what its IPFS node serves
    with kubo_server(home.blocks) as (ipfs_url, kubo):

        def launch(role: str, name: str) -> RoleLaunch:
            return RoleLaunch(
                role=role,
                name=name,
                home=home,
                chain_url=chain,
                key_name=name,
                passphrase=passphrase(home),
                blocks=tmp_path / f"{name}-blocks",  # an empty blockstore of its own
                ipfs_url=ipfs_url,
            )

        miner = build_role(launch("miner", "miner-1"), retry=RetryPolicy(max_retries=1))
        validator = build_role(launch("validator", "validator-1"))
        assert isinstance(miner, Miner) and isinstance(validator, Validator)
        assert isinstance(miner.store, TieredStore) and miner.store.remote is not None
        miner.on_start()
        validator.on_start()
        try:
            _until(
                miner.step,
                lambda: any(r.state is TxState.COMMITTED for r in miner.journal.recent(10)),
            )
            record = next(r for r in miner.journal.recent(10) if r.state is TxState.COMMITTED)
            assert kubo.store.is_pinned(record.cid), "the update was added to the shared node"
            assert not validator.store.has(record.cid)  # type: ignore[attr-defined]

            def attested() -> bool:
                subs = validator.client.submissions(record.round_id)
                return any(s.cid == record.cid and s.attestations for s in subs)

            _until(validator.step, attested)
            [sub] = validator.client.submissions(record.round_id)
            assert sub.attestations[0]["validator"] == validator.address
            assert sub.attestations[0]["verdict"] == "accept"
            assert validator.store.has(record.cid)  # type: ignore[attr-defined]
        finally:
            miner.on_stop()
            validator.on_stop()
