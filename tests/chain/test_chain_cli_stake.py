"""The stake lifecycle through the CLI against a real devnet: `r3mes tx unbond`, the
delay during which `withdraw` is refused, `r3mes tx withdraw`, and `r3mes query stake`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chain.chain_harness import key
from support.net import free_port
from support.wait import wait_until
from typer.testing import CliRunner

from r3mes.chain.client import BlockchainClient
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.keystore import Keystore
from r3mes.cli.main import app
from r3mes.paths import Home

PASS = "correct horse"
MINER = key(7)
DELAY = 120
runner = CliRunner()


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, str]]:
    home = Home(root=tmp_path_factory.mktemp("cli-stake"))
    Keystore(home.keys, scrypt_n=2**10).import_secret(
        "miner", secret_hex=(7).to_bytes(32, "big").hex(), passphrase=PASS
    )
    genesis = devnet_genesis(
        accounts={MINER.address: 10_000}, unbonding_blocks=DELAY, round_length=40
    )
    init_devnet(home, genesis)
    node = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.05))
    node.start()
    yield home, node.url
    node.stop()


def tx(devnet: tuple[Home, str], *args: str) -> Any:
    home, url = devnet
    env = {"R3MES_PASSPHRASE": PASS}
    argv = ["tx", *args, "--from", "miner", "--home", str(home.root), "--node", url]
    return runner.invoke(app, argv, env=env)


def stake(devnet: tuple[Home, str]) -> dict[str, Any]:
    result = runner.invoke(app, ["query", "stake", MINER.address, "--node", devnet[1]])
    assert result.exit_code == 0, (result.output, result.exception)
    doc: dict[str, Any] = json.loads(result.output)
    return doc


def test_unbond_then_withdraw_after_the_delay(devnet: tuple[Home, str]) -> None:
    client = BlockchainClient(devnet[1], timeout_s=5, retries=1)
    registered = tx(devnet, "register-node", "--role", "miner", "--stake", "300")
    assert registered.exit_code == 0, registered.output
    assert stake(devnet)["bonded"] == [{"role": "miner", "stake": 300, "active": True}]

    too_much = tx(devnet, "unbond", "--role", "miner", "--amount", "301")
    assert too_much.exit_code != 0
    bad_role = tx(devnet, "unbond", "--role", "banker", "--amount", "1")
    assert bad_role.exit_code != 0 and "banker" in bad_role.output + str(bad_role.exception)

    unbonded = tx(devnet, "unbond", "--role", "miner", "--amount", "200")
    assert unbonded.exit_code == 0, (unbonded.output, unbonded.exception)
    doc = json.loads(unbonded.output)
    (entry,) = stake(devnet)["unbonding"]
    assert entry == {"role": "miner", "amount": 200, "release_height": doc["height"] + DELAY}
    assert stake(devnet)["total"] == 300
    balance = client.account(MINER.address).balance

    early = tx(devnet, "withdraw")
    assert early.exit_code != 0 and "no released" in str(early.exception)

    wait_until(lambda: client.status().height >= entry["release_height"], timeout=60)
    paid = tx(devnet, "withdraw")
    assert paid.exit_code == 0, (paid.output, paid.exception)
    assert client.account(MINER.address).balance == balance + 200
    after = stake(devnet)
    assert after["unbonding"] == [] and after["total"] == 100


def test_dispute_and_proposal_queries_answer_none_when_absent(devnet: tuple[Home, str]) -> None:
    client = BlockchainClient(devnet[1], timeout_s=5, retries=1)
    assert client.dispute(1) is None
    assert client.open_disputes() == []
    assert client.proposal(1) is None
    bad = runner.invoke(app, ["query", "stake", "not-an-address", "--node", devnet[1]])
    assert bad.exit_code != 0
