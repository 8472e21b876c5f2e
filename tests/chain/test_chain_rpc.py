"""RPC, REST and BlockchainClient against a real devnet node on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chain_harness import DATASET, MODEL, free_port, key

from r3mes.chain.client import AsyncBlockchainClient, BlockchainClient
from r3mes.chain.codes import Code
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.errors import NotFound, TxRejected
from r3mes.chain.msgs import Attest, RegisterNode, TransferCredits
from r3mes.chain.proto.gen.remes.remes.v1 import query_pb2
from r3mes.paths import Home

MINER, VALIDATOR, OTHER = key(1), key(2), key(3)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetNode]:
    home = Home(root=tmp_path_factory.mktemp("devnet"))
    genesis = devnet_genesis(
        accounts={MINER.address: 10_000, VALIDATOR.address: 10_000},
        artifacts=[MODEL, DATASET],
        pow_difficulty=4,
        round_length=50,
    )
    init_devnet(home, genesis)
    devnet = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.1))
    devnet.start()
    yield devnet
    devnet.stop()


@pytest.fixture(scope="module")
def client(node: DevnetNode) -> Iterator[BlockchainClient]:
    with BlockchainClient(node.url, timeout_s=5, retries=1, backoff_s=0.05) as c:
        yield c


def test_status_params_and_artifacts(client: BlockchainClient) -> None:
    status = client.status()
    assert status.chain_id == "r3mes-devnet-1" and status.height >= 0
    assert client.params().pow_difficulty == 4
    arts = client.approved_artifacts()
    assert {a.kind for a in arts} == {"model", "dataset"}
    model = client.approved_artifacts(kind="model")[0]
    assert (model.id, model.cid, model.version, model.target_modules) == (
        "bitnet-tiny",
        "bafymodel",
        1,
        [],
    )
    raw = httpx.get(f"{client.base_url}/remes/remes/v1/artifacts", params={"kind": "model"}).json()
    assert set(raw["artifacts"][0]) >= {
        "id",
        "kind",
        "version",
        "cid",
        "sha256",
        "size",
        "base_model_id",
        "base_model_version",
        "target_modules",
        "rank",
        "hf_repo",
        "hf_revision",
        "approved_height",
    }


def test_full_flow_through_client(client: BlockchainClient, node: DevnetNode) -> None:
    client.sign_and_broadcast(MINER, [RegisterNode(creator=MINER.address, role="miner", stake=10)])
    client.sign_and_broadcast(
        VALIDATOR, [RegisterNode(creator=VALIDATOR.address, role="validator")]
    )
    assert {n.address for n in client.nodes("miner")} == {MINER.address}
    rnd = client.current_round()
    assert rnd.base_model_cid == "bafymodel" and rnd.status == "open"
    included = client.submit_gradient(
        MINER, round_number=rnd.number, shard=2, cid="bafyupd", digest="ab" * 32
    )
    assert included.height > 0
    subs = client.submissions(rnd.number)
    assert [(s.miner, s.shard, s.status) for s in subs] == [(MINER.address, 2, "pending")]
    client.sign_and_broadcast(
        VALIDATOR, [Attest(creator=VALIDATOR.address, submission_id=subs[0].id, verdict="accept")]
    )
    assert client.submissions(rnd.number)[0].status == "verified"
    board = client.leaderboard()
    assert board[0].address == MINER.address and board[0].verified_submissions == 1
    acc = client.account(MINER.address)
    assert acc.balance == 10_000 - 10 + 100 and acc.sequence == 2 and acc.roles == ["miner"]
    tasks = client.tasks(rnd.number)
    assert tasks["shards"][2]["claimed_by"] == MINER.address


def test_rejections_are_not_retried(client: BlockchainClient) -> None:
    with pytest.raises(TxRejected) as info:
        client.sign_and_broadcast(
            OTHER, [TransferCredits(creator=OTHER.address, to=MINER.address, amount=5)]
        )
    assert info.value.code == Code.INSUFFICIENT_FUNDS
    with pytest.raises(NotFound):
        client.round(10_000)
    unknown = client.account(OTHER.address)
    assert unknown.sequence == 1  # the failed tx still consumed its sequence


def test_cometbft_shapes(client: BlockchainClient, node: DevnetNode) -> None:
    base = client.base_url
    result = client.sign_and_broadcast(
        MINER, [TransferCredits(creator=MINER.address, to=OTHER.address, amount=7)]
    )
    block = httpx.get(f"{base}/block", params={"height": result.height}).json()["result"]
    assert block["block"]["header"]["height"] == str(result.height)
    txs = [base64.b64decode(t) for t in block["block"]["data"]["txs"]]
    assert any(result.hash == __import__("hashlib").sha256(t).hexdigest().upper() for t in txs)
    res = httpx.get(f"{base}/block_results", params={"height": result.height}).json()["result"]
    assert res["txs_results"][0]["code"] == 0
    tx = httpx.get(f"{base}/tx", params={"hash": "0x" + result.hash}).json()["result"]
    assert tx["height"] == str(result.height)
    found = httpx.get(
        f"{base}/tx_search", params={"query": f"message.sender='{MINER.address}'"}
    ).json()
    assert int(found["result"]["total_count"]) >= 3
    req = query_pb2.QueryAccountRequest(address=OTHER.address).SerializeToString()
    q = httpx.get(
        f"{base}/abci_query",
        params={"path": '"/remes.remes.v1.Query/Account"', "data": "0x" + req.hex()},
    )
    value = base64.b64decode(q.json()["result"]["response"]["value"])
    assert json.loads(query_pb2.QueryJsonResponse.FromString(value).json)["account"]["balance"] == 7
    rpc = httpx.post(
        base + "/", json={"jsonrpc": "2.0", "id": 5, "method": "status", "params": {}}
    ).json()
    assert rpc["id"] == 5 and rpc["result"]["node_info"]["network"] == "r3mes-devnet-1"
    assert httpx.get(f"{base}/broadcast_tx_sync", params={"tx": "0xzz"}).status_code == 400
    bad = httpx.get(f"{base}/broadcast_tx_sync", params={"tx": "0x0a00"}).json()["result"]
    assert bad["code"] == Code.DECODE
    assert httpx.get(f"{base}/remes/remes/v1/accounts/notanaddress").status_code == 400
    assert (
        httpx.get(f"{base}/remes/remes/v1/artifacts", params={"kind": "weights"}).status_code == 400
    )
    assert httpx.post(base + "/", content=b"x" * 300_000).status_code == 413


def test_websocket_subscribe_streams_new_blocks(node: DevnetNode) -> None:
    import websockets.sync.client

    with websockets.sync.client.connect(
        node.url.replace("http", "ws") + "/subscribe", open_timeout=5
    ) as ws:
        first = json.loads(ws.recv(timeout=5))
        second = json.loads(ws.recv(timeout=5))
    h1 = int(first["result"]["data"]["value"]["block"]["header"]["height"])
    h2 = int(second["result"]["data"]["value"]["block"]["header"]["height"])
    assert h2 == h1 + 1


def test_async_client(node: DevnetNode) -> None:
    async def run() -> tuple[int, int]:
        client = AsyncBlockchainClient(node.url, timeout_s=5)
        try:
            status = await client.status()
            acc = await client.account(MINER.address)
            return status.height, acc.balance
        finally:
            await client.aclose()

    height, balance = asyncio.run(run())
    assert height > 0 and balance > 0


def test_client_retries_5xx_and_network_errors_but_not_4xx() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/status" and len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        if request.url.path == "/status":
            return httpx.Response(
                200,
                json={
                    "result": {
                        "node_info": {"network": "c"},
                        "sync_info": {
                            "latest_block_height": "4",
                            "latest_app_hash": "AA",
                            "latest_block_hash": "BB",
                            "latest_block_time": "t",
                        },
                    }
                },
            )
        if request.url.path.endswith("/params"):
            return httpx.Response(400, json={"code": 400, "message": "bad"})
        raise httpx.ConnectError("refused", request=request)

    client = BlockchainClient(
        "http://127.0.0.1:1", transport=httpx.MockTransport(handler), retries=3, backoff_s=0.001
    )
    assert client.status().height == 4 and calls.count("/status") == 3
    calls.clear()
    with pytest.raises(Exception, match="bad"):
        client.params()
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(Exception, match="unreachable"):
        client.leaderboard()
    assert len(calls) == 4


def test_client_times_out_on_silent_server(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        client = BlockchainClient(url, timeout_s=0.2, retries=1, backoff_s=0.01)
        start = time.monotonic()
        with pytest.raises(Exception, match="unreachable"):
            client.status()
        assert time.monotonic() - start < 3


def test_second_node_on_same_home_refused(node: DevnetNode) -> None:
    from r3mes.chain.errors import ChainError

    with pytest.raises(ChainError, match="already using"):
        DevnetNode(node.home, DevnetConfig(port=free_port()))


def test_stale_pid_file_is_not_a_running_devnet(tmp_path: Path) -> None:
    import os

    from r3mes.chain.devnet import pid_path, running_devnet, stop_devnet

    home = Home(root=tmp_path)
    pid_path(home).parent.mkdir(parents=True)
    pid_path(home).write_text(json.dumps({"pid": os.getpid(), "url": "x", "start": "0"}))
    assert running_devnet(home) is None and stop_devnet(home) is None
