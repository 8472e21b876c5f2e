"""Roles on separate machines: each has its own empty blockstore and shares content only
through real Kubo nodes, swarm-connected on loopback (bitswap), over a real devnet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.devnet import running_devnet
from support.kubo import ipfs_binary, kubo_node

from r3mes.node.launch import RoleLaunch, build_miner, build_validator
from r3mes.node.localnet.setup import NetworkSpec, passphrase
from r3mes.node.miner.journal import TxState
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.paths import Home
from r3mes.storage.blockstore import Blockstore
from r3mes.storage.kubo import KuboClient
from r3mes.storage.kubo_daemon import KuboDaemon
from r3mes.storage.multiformats import Cid, parse_cid
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
    # the genesis machine publishes its artifacts through Kubo node A; the miner uses A,
    # the validator node B, which finds everything over bitswap
    with kubo_node(tmp_path / "kubo-a") as node_a, kubo_node(tmp_path / "kubo-b") as node_b:
        node_b.connect(node_a)
        genesis_store = Blockstore(home.blocks)
        with KuboClient(node_a.api_url, timeout=30.0) as publisher:
            for cid in genesis_store.pins():
                assert publisher.add_bytes(genesis_store.get_bytes(cid)) == cid

        def launch(name: str, ipfs_url: str) -> RoleLaunch:
            return RoleLaunch(
                name=name,
                home=home,
                chain_url=chain,
                key_name=name,
                passphrase=passphrase(home),
                blocks=tmp_path / f"{name}-blocks",  # an empty blockstore of its own
                ipfs_url=ipfs_url,
            )

        miner = build_miner(launch("miner-1", node_a.api_url), retry=RetryPolicy(max_retries=1))
        validator = build_validator(launch("validator-1", node_b.api_url))
        assert isinstance(miner.store, TieredStore) and miner.store.remote is not None
        miner.on_start()
        validator.on_start()
        try:
            _until(
                miner.step,
                lambda: any(r.state is TxState.COMMITTED for r in miner.journal.recent(10)),
            )
            record = next(r for r in miner.journal.recent(10) if r.state is TxState.COMMITTED)
            assert record.cid is not None
            v1 = parse_cid(record.cid)
            pinned = str(Cid(version=1, codec=v1.codec, digest=v1.digest))
            assert pinned in node_a.pins(), "the update was added through node A"
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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_up_with_kubo_storage_reaches_three_adapter_versions(tmp_path: Path) -> None:
    """`r3mes up --storage kubo`: one Kubo node per role group, rounds run through them, and
    the miners' updates reach the validators' node over bitswap."""
    binary = ipfs_binary()
    env = {
        **os.environ,
        "R3MES_HOME": str(tmp_path),
        "PATH": f"{Path(binary).parent}:{os.environ['PATH']}",
    }
    argv = ["up", "--headless", "--rounds", "3", "--base-model", "tiny", "--miners", "1"]
    argv += ["--no-serving", "--no-backend", "--chain-port", "0", "--round-blocks", "8"]
    argv += ["--block-interval", "0.5", "--difficulty", "4", "--storage", "kubo"]
    done = subprocess.run(
        [sys.executable, "-m", "r3mes.cli.main", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "network ready" in done.stdout

    def repo(group: str) -> KuboDaemon:
        return KuboDaemon(
            repo=tmp_path / "kubo" / group, binary=binary, api_port=0, gateway_port=0, swarm_port=0
        )

    genesis = {parse_cid(c).digest for c in Blockstore(tmp_path / "blocks").pins()}
    miners_pins = {parse_cid(c).digest for c in repo("miners").pins()}
    updates = miners_pins - genesis
    assert updates, "the miner added its updates through its own Kubo node"
    validators_have = {
        parse_cid(c).digest for c in repo("validators").ipfs("refs", "local").split()
    }
    assert updates <= validators_have, "the validator fetched every update over bitswap"
