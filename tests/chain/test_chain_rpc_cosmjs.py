"""A standard CometBFT RPC client (cosmjs's Comet38Client, from npm, run by node) decodes
every answer of the embedded devnet, websocket subscription included.

`tests/chain/cosmjs/` pins @cosmjs/tendermint-rpc in package.json + package-lock.json; the
fixture runs `npm ci` when node_modules is missing. `rpc.mjs` calls each client method and
reports what cosmjs raised, so a field the devnet leaves out or encodes differently from
CometBFT fails here by name. (test_chain_rpc_parity.py compares the raw JSON with a real
node; this is the client's-eye view.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chain.chain_harness import key
from support.net import free_port

from r3mes.chain.client import BlockchainClient
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.msgs import TransferCredits
from r3mes.chain.proto.gen.remes.remes.v1 import query_pb2
from r3mes.chain.tx import build_tx
from r3mes.paths import Home

HERE = Path(__file__).with_name("cosmjs")
SENDER, RECEIVER = key(31), key(32)
CHAIN_ID = "r3mes-cosmjs-1"


@pytest.fixture(scope="module")
def script() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed for the cosmjs RPC client test"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if not (HERE / "node_modules" / "@cosmjs" / "tendermint-rpc").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=300)
    return HERE / "rpc.mjs"


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetNode]:
    home = Home(root=tmp_path_factory.mktemp("devnet"))
    init_devnet(home, devnet_genesis(chain_id=CHAIN_ID, accounts={SENDER.address: 1_000}))
    node = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.2))
    node.start()
    yield node
    node.stop()


def run_cosmjs(script: Path, url: str) -> dict[str, Any]:
    with BlockchainClient(url) as client:
        account = client.account(SENDER.address)
    msg = TransferCredits(creator=SENDER.address, to=RECEIVER.address, amount=1)
    txs = [
        build_tx(
            [msg],
            key=SENDER,
            chain_id=CHAIN_ID,
            account_number=account.account_number,
            sequence=account.sequence + i,
        ).hex()
        for i in range(3)
    ]
    request = query_pb2.QueryAccountRequest(address=RECEIVER.address).SerializeToString()
    payload = {"url": url, "txs": txs, "account_query": request.hex(), "sender": SENDER.address}
    done = subprocess.run(
        ["node", str(script)],
        input=json.dumps(payload).encode(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    return dict(json.loads(done.stdout))


def test_cosmjs_decodes_every_devnet_answer(script: Path, devnet: DevnetNode) -> None:
    out = run_cosmjs(script, devnet.url)
    failed = {k: v["error"][:400] for k, v in out.items() if not v["ok"] and k != "txNotFound"}
    assert not failed, failed
    committed = out["broadcastTxCommit"]["value"]
    assert committed["code"] == 0 and out["tx"]["value"] == committed["height"]
    assert out["broadcastTxSync"]["value"]["code"] == 0
    assert out["genesis"]["value"] == CHAIN_ID
    assert out["abciQuery"]["value"]["code"] == 0 and out["abciQuery"]["value"]["bytes"] > 0
    assert out["block"]["value"] >= 1 and out["blockResults"]["value"] >= 1
    assert out["commit"]["value"] in (True, False) and out["validators"]["value"] == 1
    assert out["txSearch"]["value"] >= 1 and out["blockSearch"]["value"] >= 1
    assert out["subscribeNewBlock"]["value"] > committed["height"] - 1
    # a CometBFT error object reaches the client as cosmjs's error, with CometBFT's words
    not_found = out["txNotFound"]
    assert not not_found["ok"] and '"code":-32603' in not_found["error"]
    assert "not found" in not_found["error"]
