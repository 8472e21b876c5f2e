"""The ledger under real CometBFT v0.38 validators on loopback.

Every test runs real `cometbft node` processes beside `r3mes chain abci` processes (the
binary from scripts/cometbft.sh; skipped on a developer's machine without it, failed under
CI). Blocks come every ~0.3 s (timeout_commit 200ms) so each scenario fits in well under a
minute on two cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets.sync.client
from support.net import free_port

from r3mes.chain import testnet
from r3mes.chain.client import BlockchainClient
from r3mes.chain.cometbft import (
    CometbftNetwork,
    CometbftNotInstalled,
    app_log,
    cometbft_log,
    find_cometbft,
)
from r3mes.chain.crypto import SigningKey
from r3mes.chain.devnet import devnet_genesis
from r3mes.chain.errors import NotFound
from r3mes.chain.genesis import Genesis
from r3mes.chain.msgs import TransferCredits

pytestmark = pytest.mark.slow

CHAIN_ID = "r3mes-bft-1"
FUNDED = [SigningKey(secret=(1000 + i).to_bytes(32, "big")) for i in range(4)]


def cometbft_binary() -> str:
    gopath_bin = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin"
    try:
        return find_cometbft((gopath_bin,))
    except CometbftNotInstalled as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def make_network(root: Path, validators: int = 4) -> CometbftNetwork:
    genesis = devnet_genesis(
        chain_id=CHAIN_ID, accounts={k.address: 1_000_000 for k in FUNDED}, round_length=5
    )
    ports = tuple(
        testnet.NodePorts(free_port(), free_port(), free_port()) for _ in range(validators)
    )
    config = testnet.TestnetConfig(
        validators=validators, ports=ports, timeout_commit="200ms", timeout_propose="1s"
    )
    nodes = testnet.write_testnet(root / "net", genesis, config)
    return CometbftNetwork(nodes, binary=cometbft_binary())


@pytest.fixture
def net(tmp_path: Path) -> Iterator[CometbftNetwork]:
    network = make_network(tmp_path)
    try:
        yield network
    finally:
        network.close()


def gateway(rpc_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "r3mes.cli.main", "chain", "rest", "--rpc", rpc_url]
    proc = subprocess.Popen([*cmd, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    with BlockchainClient(url) as client:
        client.wait_ready(timeout_s=60, alive=lambda: proc.poll() is None)
    return proc, url


def app_hashes(net: CometbftNetwork, i: int, upto: int) -> list[str | None]:
    return [net.app_hash_after(i, h) for h in range(1, upto + 1)]


def assert_agree(net: CometbftNetwork, nodes: list[int], upto: int) -> None:
    reference = app_hashes(net, nodes[0], upto)
    assert None not in reference
    for i in nodes[1:]:
        assert app_hashes(net, i, upto) == reference, f"node{i} disagrees with node{nodes[0]}"


def test_four_validators_agree_and_clients_talk_to_any_node(net: CometbftNetwork) -> None:
    net.start()
    assert net.wait_height(2, timeout_s=60), [net.height(i) for i in range(4)]
    procs, clients = [], []
    try:
        for i in range(4):  # one gateway per node: a tx sent to any node
            proc, url = gateway(net.nodes[i].rpc_url)
            procs.append(proc)
            clients.append(BlockchainClient(url))
        receiver = SigningKey(secret=(7).to_bytes(32, "big")).address
        hashes = []
        for i, client in enumerate(clients):
            msg = TransferCredits(creator=FUNDED[i].address, to=receiver, amount=10 + i)
            hashes.append(client.sign_and_broadcast(FUNDED[i], [msg]).hash)
        for client in clients:  # every node sees every tx, and the same balance
            for digest in hashes:  # (a node may commit a block later than the one sent to)
                assert client.wait_for_tx(digest, timeout_s=60).code == 0
            assert client.account(receiver).balance == 10 + 11 + 12 + 13
            assert client.status().chain_id == CHAIN_ID
        current = clients[0].current_round().number
        assert current >= 1 and clients[1].round(current).number == current
        assert clients[2].submissions(current) == [] and clients[3].submissions() == []
        assert clients[0].tasks(current)["round"] == current
        assert clients[1].params().round_length == 5
        assert clients[2].nodes() == [] and clients[3].leaderboard(10) == []
        with pytest.raises(NotFound):
            clients[0].round(10**6)
        uri = httpx.get(f"{clients[1].base_url}/block", params={"height": "1"}, timeout=10)
        assert uri.json()["result"]["block"]["header"]["height"] == "1"
        query = f"\"message.sender='{FUNDED[1].address}'\""
        search = httpx.get(f"{clients[3].base_url}/tx_search", params={"query": query}, timeout=10)
        found_txs = search.json()["result"]["txs"]
        assert [t["hash"] for t in found_txs] == [hashes[1]]  # indexed on every node
        genesis = httpx.get(f"{clients[2].base_url}/genesis", timeout=10).json()["result"]
        assert genesis["genesis"]["chain_id"] == CHAIN_ID  # CometBFT's, as the devnet's
        assert Genesis.from_json(json.dumps(genesis["genesis"]["app_state"])).chain_id == CHAIN_ID
        missing = httpx.get(f"{clients[1].base_url}/tx", params={"hash": "0x" + "00" * 32})
        assert missing.status_code == 200 and "not found" in missing.json()["error"]["data"]
        assert clients[1].tx("00" * 32) is None  # the client reads it as NotFound
        with websockets.sync.client.connect(
            clients[0].base_url.replace("http", "ws") + "/websocket"
        ) as ws:
            query = "tm.event='NewBlock'"
            ws.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"query": query}}
                )
            )
            replies = [json.loads(ws.recv(timeout=60)) for _ in range(2)]
            assert replies[1]["result"]["data"]["type"] == "tendermint/event/NewBlock"
        top = min(net.height(i) for i in range(4)) - 1
        assert_agree(net, [0, 1, 2, 3], top)
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_one_down_goes_on_two_down_halts_restart_catches_up(net: CometbftNetwork) -> None:
    net.start()
    assert net.wait_height(3, timeout_s=60)
    net.kill(3)
    h = max(net.height(i) for i in range(3))
    assert net.wait_height(h + 3, nodes=[0, 1, 2], timeout_s=120), "3 of 4 must keep committing"
    net.kill(2)
    time.sleep(1.0)  # let the block in flight land
    halted = max(net.height(i) for i in range(2))
    time.sleep(4.0)
    assert max(net.height(i) for i in range(2)) <= halted + 1, "2 of 4 must not commit"
    net.start(2)
    net.start(3)
    assert net.wait_height(halted + 3, timeout_s=60), [net.height(i) for i in range(4)]
    assert_agree(net, [0, 1, 2, 3], halted + 2)


def test_abci_app_sigkilled_at_random_points_is_restored_by_the_handshake(
    net: CometbftNetwork,
) -> None:
    rng = random.Random(14)
    net.start()
    assert net.wait_height(2, timeout_s=60)
    proc, url = gateway(net.nodes[1].rpc_url)
    sent = []
    try:
        with BlockchainClient(url) as client:
            receiver = SigningKey(secret=(8).to_bytes(32, "big")).address
            crashes = 20
            for n in range(crashes):
                for _ in range(2):  # txs in flight around the crash
                    msg = TransferCredits(creator=FUNDED[0].address, to=receiver, amount=1)
                    sent.append(client.sign_and_broadcast(FUNDED[0], [msg], wait=False).hash)
                time.sleep(rng.uniform(0.0, 0.6))  # a random point of the block cycle
                noticed = cometbft_log(net.nodes[0]).count(APP_LOST)
                net.kill_app(0)
                wait_cometbft_stops_without_its_app(net, noticed)
                net.start(0)
                assert net.wait_height(net.height(1), nodes=[0], timeout_s=60), f"crash {n}"
            for digest in sent:
                client.wait_for_tx(digest, timeout_s=30)
            top = net.height(1)
            assert net.wait_height(top + 1, timeout_s=30)
            assert client.account(receiver).balance == len(sent)  # nothing lost
            assert client.account(FUNDED[0].address).sequence == len(sent)  # nothing twice
        assert_agree(net, [0, 1, 2, 3], top)
        assert "Handshake" in cometbft_log(net.nodes[0]) or "handshake" in cometbft_log(
            net.nodes[0]
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


APP_LOST = "connection terminated. Did the application crash?"


def wait_cometbft_stops_without_its_app(net: CometbftNetwork, noticed_before: int) -> None:
    """Node 0's CometBFT notices its dead app and stops itself.

    It notices at its next call to the app: the next block, or (when a loaded box stalls
    consensus) the CheckTx of a tx sent to it directly. Then it signals itself to stop, but its
    shutdown can hang in the p2p switch ("Won't start a peer - switch is not running", seen
    under load): once it has said it lost the app, it gets 20 s, then SIGKILL, as a process
    supervisor would do. What the test is about is what happens at the restart.
    """
    proc = net.procs[0].cometbft
    assert proc is not None
    deadline = time.monotonic() + 120
    nudged = time.monotonic() + 5
    grace_until: float | None = None
    while proc.poll() is None:
        now = time.monotonic()
        assert now < deadline, "cometbft kept running without its app"
        if grace_until is None and cometbft_log(net.nodes[0]).count(APP_LOST) > noticed_before:
            grace_until = now + 20
        if grace_until is not None and now > grace_until:
            net.kill_cometbft(0)
            break
        if grace_until is None and now > nudged:
            nudge(net.nodes[0].rpc_url)
            nudged = now + 5
        time.sleep(0.1)
    net.procs[0].cometbft = None


def nudge(rpc_url: str) -> None:
    """Send node an (invalid) tx: its mempool's CheckTx calls the app."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"{rpc_url}/broadcast_tx_async", params={"tx": "0x00"}, timeout=2)


def test_a_lying_app_stops_its_node_while_the_other_three_go_on(net: CometbftNetwork) -> None:
    lie_at = 4
    for i in range(3):
        net.start_app(i)
    net.start_app(3, extra=["--test-lie-from-height", str(lie_at)])
    for i in range(4):
        net.start_cometbft(i)
    assert net.wait_height(lie_at + 6, nodes=[0, 1, 2], timeout_s=60)
    assert net.height(3) <= lie_at + 1
    log = cometbft_log(net.nodes[3])
    assert "CONSENSUS FAILURE" in log or "wrong Block.Header.AppHash" in log, log[-3000:]
    assert "wrong Block.Header.AppHash" in log
    assert "Traceback" not in app_log(net.nodes[3])
    assert_agree(net, [0, 1, 2], lie_at + 4)


@pytest.mark.timeout(600)
def test_up_with_cometbft_roles_produce_versions_and_a_cheater_is_slashed(tmp_path: Path) -> None:
    import threading

    from r3mes.node.localnet.dashboard import Snapshot
    from r3mes.node.localnet.network import UpOptions, run_network
    from r3mes.node.localnet.setup import NetworkSpec
    from r3mes.paths import Home

    spec = NetworkSpec(
        home=Home(root=tmp_path / "home"),
        miners=1,
        cheaters=("random",),
        round_blocks=10,
        block_interval=0.5,
        serving=False,
        backend=False,
        base_model="tiny",
        dataset_chars=60_000,
    )
    options = UpOptions(
        chain_port=0,
        rounds=2,
        max_rounds=10,
        poll_s=0.5,
        engine="cometbft",
        validators=4,
        cometbft_binary=cometbft_binary(),
    )
    snapshots: list[Snapshot] = []
    result = run_network(spec, options, stop=threading.Event(), on_snapshot=snapshots.append)
    assert result.reached, snapshots[-1].line() if snapshots else "no snapshot"
    final = result.snapshot
    assert final is not None and final.adapter_version >= 3
    miners = {m.name: m for m in final.miners}
    assert miners["cheater-1"].rejected >= 1 and miners["cheater-1"].earned == 0
    assert miners["cheater-1"].slashed > 0
    assert miners["miner-1"].rejected == 0 and miners["miner-1"].earned > 0
    assert {f"cometbft-node{i}" for i in range(4)} <= result.exit_codes.keys()
    heights = final.validator_heights
    assert sorted(heights) == [f"node{i}" for i in range(4)]
    assert all(h >= final.height - 2 for h in heights.values()), heights
    assert "validators node0=" in final.line()
