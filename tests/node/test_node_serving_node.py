"""The serving node against a real devnet: it registers, and its heartbeats land on the
ledger (the node listing shows it active, with the time of its last heartbeat)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.devnet import running_devnet, tiny_spec

from r3mes.chain.client_types import NodeInfo
from r3mes.node.launch import RoleLaunch, build_serving_node
from r3mes.node.localnet.setup import passphrase
from r3mes.paths import Home


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Home, str]]:
    spec = tiny_spec(tmp_path, serving=True, dataset_chars=20_000)
    with running_devnet(spec, block_interval_s=0.3) as running:
        yield running


@pytest.mark.timeout(180)
def test_serving_node_registers_and_heartbeats_land_on_chain(
    chain: tuple[Home, str],
) -> None:
    home, url = chain
    launch = RoleLaunch(
        name="serving-1",
        home=home,
        chain_url=url,
        key_name="serving-1",
        passphrase=passphrase(home),
    )
    serving = build_serving_node(launch, heartbeat_s=0.2)
    serving.on_start()
    try:

        def listed() -> NodeInfo:
            nodes = serving.client.nodes("serving")
            found = [n for n in nodes if n.address == serving.address]
            assert found, "registered on start"
            return found[0]

        registered = listed()
        assert registered.endpoint == serving.api_url and registered.active
        beats: list[int] = []
        deadline = time.monotonic() + 60
        while len(set(beats)) < 3:  # three heartbeats, each in a later block
            assert time.monotonic() < deadline, f"heartbeats not on chain: {beats}"
            serving.step()
            beats.append(listed().last_heartbeat_ms)
            time.sleep(0.3)
        assert beats == sorted(beats) and beats[-1] > registered.last_heartbeat_ms
        node = listed()
        assert node.active and node.adapter_version == serving.adapter_version >= 1
        assert node.capacity == serving.settings.capacity
    finally:
        serving.on_stop()
