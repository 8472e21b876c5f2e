"""`r3mes chain testnet`: CometBFT homes, keys in CometBFT's formats, genesis with app state."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from chain.chain_harness import make_genesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from r3mes.chain import testnet
from r3mes.chain.errors import ChainError
from r3mes.chain.genesis import Genesis
from r3mes.cli.main import app


def test_homes_hold_matching_keys_peers_and_the_r3mes_genesis(tmp_path: Path) -> None:
    genesis = make_genesis()
    config = testnet.TestnetConfig(validators=3, base_port=40000, power=7)
    nodes = testnet.write_testnet(tmp_path, genesis, config)
    assert [n.name for n in nodes] == ["node0", "node1", "node2"]
    assert nodes[1].ports == testnet.NodePorts(40010, 40011, 40012)
    docs = [json.loads((n.home / "config/genesis.json").read_text()) for n in nodes]
    assert all(d == docs[0] for d in docs)
    doc = docs[0]
    assert doc["chain_id"] == genesis.chain_id and doc["initial_height"] == "1"
    assert Genesis.from_json(json.dumps(doc["app_state"])) == genesis
    assert [v["power"] for v in doc["validators"]] == ["7"] * 3
    for node, validator in zip(nodes, doc["validators"], strict=True):
        key = json.loads((node.home / "config/priv_validator_key.json").read_text())
        raw = base64.b64decode(key["priv_key"]["value"])
        public = base64.b64decode(key["pub_key"]["value"])
        derived = Ed25519PrivateKey.from_private_bytes(raw[:32]).public_key().public_bytes_raw()
        assert raw[32:] == public == derived  # Go's 64-byte seed||public form
        assert key["address"] == validator["address"] == node.validator_address
        assert key["address"] == hashlib.sha256(public).digest()[:20].hex().upper()
        assert (node.home / "config/priv_validator_key.json").stat().st_mode & 0o077 == 0
        toml = (node.home / "config/config.toml").read_text()
        others = [o for o in nodes if o is not node]
        for other in others:
            assert f"{other.node_id}@127.0.0.1:{other.ports.p2p}" in toml
        assert f'proxy_app = "tcp://127.0.0.1:{node.ports.abci}"' in toml
        state = json.loads((node.home / "data/priv_validator_state.json").read_text())
        assert state == {"height": "0", "round": 0, "step": 0}
    assert testnet.load_testnet(tmp_path) == nodes
    with pytest.raises(ChainError, match="not empty"):
        testnet.write_testnet(tmp_path, genesis, config)


def test_config_is_checked() -> None:
    with pytest.raises(ChainError):
        testnet.TestnetConfig(validators=0)
    with pytest.raises(ChainError):
        testnet.TestnetConfig(validators=2, ports=(testnet.NodePorts(1, 2, 3),))
    with pytest.raises(ChainError):
        testnet.NodePorts(0, 1, 2)
    with pytest.raises(ChainError):
        testnet.load_testnet(Path("/nonexistent-r3mes"))


def test_cli_writes_the_homes(tmp_path: Path) -> None:
    out = tmp_path / "net"
    result = CliRunner().invoke(
        app, ["chain", "testnet", "--validators", "2", "--out", str(out), "--base-port", "41000"]
    )
    assert result.exit_code == 0, result.output
    assert "node1" in result.output and "41011" in result.output
    assert len(testnet.load_testnet(out)) == 2
