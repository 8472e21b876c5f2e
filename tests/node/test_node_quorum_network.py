"""`r3mes up` with a real quorum: 3 validator processes, k = 2, one of them lying, plus a
cheating miner. The honest majority keeps verifying work and approving adapter versions
(checked merges); the cheater is slashed, and the liar, outvoted on every verdict, earns
nothing and is slashed when the disputes it opens end against it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support.net import free_port

from r3mes.chain.client import BlockchainClient
from r3mes.chain.keystore import Keystore
from r3mes.node.localnet.dashboard import Snapshot
from r3mes.node.localnet.network import UpOptions, run_network
from r3mes.node.localnet.setup import NetworkSpec, passphrase
from r3mes.paths import Home


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_honest_validators_outvote_a_liar_and_versions_keep_coming(tmp_path: Path) -> None:
    spec = NetworkSpec(
        home=Home(root=tmp_path),
        miners=1,
        cheaters=("random",),
        round_blocks=12,
        block_interval=0.5,
        serving=False,
        backend=False,
        base_model="tiny",
        dataset_chars=60_000,
        validators=3,
        quorum=2,
        liars=1,
        attestation_rounds=1,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    seen: dict[str, dict[str, int]] = {}
    addresses: dict[str, str] = {}
    names = ("validator-1", "validator-2", "validator-3", "miner-1", "cheater-1")

    def watch() -> None:
        if not addresses:
            keys = Keystore(spec.home.keys)
            for name in names:
                addresses[name] = keys.load(name, passphrase=passphrase(spec.home)).address
        with BlockchainClient(url, timeout_s=5, retries=1) as client:
            for name in names:
                acc = client.account(addresses[name])
                seen[name] = {"earned": acc.earned, "slashed": acc.slashed, "rep": acc.reputation}

    snapshots: list[Snapshot] = []
    stop = threading.Event()

    def on_snapshot(snapshot: Snapshot) -> None:
        snapshots.append(snapshot)
        if len(snapshots) % 4 == 0:
            watch()
            done = seen.get("validator-3", {}).get("slashed", 0) > 0
            if done and snapshot.adapter_version >= 3:
                stop.set()  # two versions approved and the liar's dispute decided

    result = run_network(
        spec,
        UpOptions(chain_port=port, max_rounds=16, poll_s=0.5),
        stop=stop,
        on_snapshot=on_snapshot,
    )
    assert result.ok and stop.is_set(), snapshots[-1].line() if snapshots else "no snapshot"
    final = result.snapshot
    assert final is not None and final.adapter_version >= 3  # genesis v1 + 2 approved
    miners = {m.name: m for m in final.miners}
    assert miners["cheater-1"].slashed > 0 and miners["cheater-1"].verified == 0
    assert miners["miner-1"].rejected == 0 and miners["miner-1"].verified >= 2
    assert seen, "the ledger was read while the network ran"
    liar, honest = seen["validator-3"], [seen["validator-1"], seen["validator-2"]]
    assert liar["earned"] == 0, "the liar never sided with a settled verdict"
    assert all(h["earned"] > 0 for h in honest)
    # the liar sided with the cheater; its own dispute (it accepted what the others rejected)
    # ends with the referee's step against it: slashed like the cheater
    assert liar["slashed"] > 0, "the liar lost a dispute"
    assert all(h["slashed"] == 0 for h in honest)
