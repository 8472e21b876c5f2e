"""CometBFT homes for an N-validator ledger on one machine (`r3mes chain testnet`).

Each home (`<out>/node<i>/`) holds what `cometbft node --home` reads: `config/config.toml`
(loopback ports, persistent peers, the ABCI app's address), `config/genesis.json` (the
validators with their voting power and the R3MES genesis as `app_state`),
`config/node_key.json`, `config/priv_validator_key.json` and
`data/priv_validator_state.json`. Consensus keys are ed25519 and live only here; account
keys (secp256k1) stay in the keystore.

Only the config keys R3MES needs are written; CometBFT fills every other one with its
default.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from r3mes.chain.errors import ChainError
from r3mes.chain.genesis import Genesis

MAX_VALIDATORS = 64


@dataclass(frozen=True)
class NodePorts:
    """The loopback ports of one node."""

    p2p: int
    """Peer-to-peer (validators gossip blocks and votes here)."""
    rpc: int
    """CometBFT's JSON-RPC and websocket."""
    abci: int
    """Where `r3mes chain abci` listens for this node."""

    def __post_init__(self) -> None:
        for port in (self.p2p, self.rpc, self.abci):
            if not 1 <= port < 65536:
                raise ChainError(f"port {port} is not in [1, 65535]")


@dataclass(frozen=True)
class TestnetConfig:
    validators: int = 4
    """Number of validators (each with one node)."""
    power: int = 10
    """Voting power of each validator (from genesis)."""
    base_port: int = 26600
    """Node i uses base_port + 10*i (+0 p2p, +1 RPC, +2 ABCI) unless `ports` is given."""
    ports: tuple[NodePorts, ...] = ()
    """Explicit ports per node (tests pass free ones)."""
    timeout_commit: str = "1s"
    """CometBFT's pause after a commit: about the block interval."""
    timeout_propose: str = "2s"
    """How long validators wait for a proposal before moving to the next round."""

    def __post_init__(self) -> None:
        if not 1 <= self.validators <= MAX_VALIDATORS:
            raise ChainError(f"validators must be in [1, {MAX_VALIDATORS}]")
        if self.power < 1:
            raise ChainError("power must be >= 1")
        if self.ports and len(self.ports) != self.validators:
            raise ChainError("give one NodePorts per validator")
        if not self.ports and not 1 <= self.base_port <= 65535 - 10 * self.validators:
            raise ChainError("base_port leaves no room for the nodes' ports")

    def node_ports(self) -> tuple[NodePorts, ...]:
        if self.ports:
            return self.ports
        b = self.base_port
        return tuple(
            NodePorts(b + 10 * i, b + 10 * i + 1, b + 10 * i + 2) for i in range(self.validators)
        )


@dataclass(frozen=True)
class TestnetNode:
    """One written home: where it is and how to reach it."""

    name: str
    home: Path
    node_id: str
    validator_address: str
    ports: NodePorts

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.rpc}"

    @property
    def abci_address(self) -> str:
        return f"tcp://127.0.0.1:{self.ports.abci}"


@dataclass(frozen=True)
class Ed25519Key:
    seed: bytes
    public: bytes

    @classmethod
    def generate(cls) -> Ed25519Key:
        key = Ed25519PrivateKey.generate()
        seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(seed, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def address(self) -> str:
        """CometBFT's address: the first 20 bytes of SHA-256 of the public key, hex."""
        return hashlib.sha256(self.public).digest()[:20].hex().upper()

    def pub_json(self) -> dict[str, str]:
        return {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(self.public).decode()}

    def priv_json(self) -> dict[str, str]:
        value = base64.b64encode(self.seed + self.public).decode()  # Go's 64-byte form
        return {"type": "tendermint/PrivKeyEd25519", "value": value}


def _rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}000000Z"


def cometbft_genesis(
    genesis: Genesis, validators: Sequence[tuple[str, Ed25519Key]], power: int
) -> dict[str, Any]:
    """genesis.json: CometBFT's fields, with the R3MES genesis document as app_state."""
    return {
        "genesis_time": _rfc3339(genesis.genesis_time_ms),
        "chain_id": genesis.chain_id,
        "initial_height": "1",
        "validators": [
            {"address": key.address, "pub_key": key.pub_json(), "power": str(power), "name": name}
            for name, key in validators
        ],
        "app_hash": "",
        "app_state": json.loads(genesis.to_json()),
    }


def config_toml(
    *, name: str, ports: NodePorts, peers: str, timeout_commit: str, timeout_propose: str
) -> str:
    return f"""# Written by `r3mes chain testnet`; CometBFT fills every other key with its default.
proxy_app = "tcp://127.0.0.1:{ports.abci}"
moniker = "{name}"
log_level = "info"

[rpc]
laddr = "tcp://127.0.0.1:{ports.rpc}"
max_body_bytes = 2000000

[p2p]
laddr = "tcp://127.0.0.1:{ports.p2p}"
external_address = "127.0.0.1:{ports.p2p}"
persistent_peers = "{peers}"
addr_book_strict = false
allow_duplicate_ip = true
pex = false

[mempool]
max_tx_bytes = 1048576

[consensus]
timeout_propose = "{timeout_propose}"
timeout_commit = "{timeout_commit}"
create_empty_blocks = true

[tx_index]
indexer = "kv"

[instrumentation]
prometheus = false
"""


def write_testnet(
    out: Path, genesis: Genesis, config: TestnetConfig, *, overwrite: bool = False
) -> list[TestnetNode]:
    """Write one CometBFT home per validator under `out`; returns them in order."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ChainError(f"{out} is not empty; pass overwrite to replace it")
    names = [f"node{i}" for i in range(config.validators)]
    node_keys = [Ed25519Key.generate() for _ in names]
    val_keys = [Ed25519Key.generate() for _ in names]
    ports = config.node_ports()
    nodes = [
        TestnetNode(name, out / name, nk.address.lower(), vk.address, p)
        for name, nk, vk, p in zip(names, node_keys, val_keys, ports, strict=True)
    ]
    doc = cometbft_genesis(genesis, list(zip(names, val_keys, strict=True)), config.power)
    for node, node_key, val_key in zip(nodes, node_keys, val_keys, strict=True):
        peers = ",".join(
            f"{other.node_id}@127.0.0.1:{other.ports.p2p}" for other in nodes if other is not node
        )
        cfg, data = node.home / "config", node.home / "data"
        cfg.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        toml = config_toml(
            name=node.name,
            ports=node.ports,
            peers=peers,
            timeout_commit=config.timeout_commit,
            timeout_propose=config.timeout_propose,
        )
        (cfg / "config.toml").write_text(toml)
        (cfg / "genesis.json").write_text(json.dumps(doc, indent=2))
        _write_secret(cfg / "node_key.json", {"priv_key": node_key.priv_json()})
        validator = {
            "address": val_key.address,
            "pub_key": val_key.pub_json(),
            "priv_key": val_key.priv_json(),
        }
        _write_secret(cfg / "priv_validator_key.json", validator)
        state = {"height": "0", "round": 0, "step": 0}
        (data / "priv_validator_state.json").write_text(json.dumps(state, indent=2))
    return nodes


def _write_secret(path: Path, doc: dict[str, Any]) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(doc, indent=2))


def load_testnet(out: Path) -> list[TestnetNode]:
    """The homes `write_testnet` wrote under `out`, read back from their files."""
    nodes = []
    for home in sorted(out.glob("node*"), key=lambda p: int(p.name[4:] or 0)):
        cfg = home / "config"
        try:
            node_key = json.loads((cfg / "node_key.json").read_text())
            val_key = json.loads((cfg / "priv_validator_key.json").read_text())
            toml = (cfg / "config.toml").read_text()
        except (OSError, ValueError) as exc:
            raise ChainError(f"{home} is not a testnet home: {exc}") from exc
        raw = base64.b64decode(node_key["priv_key"]["value"])
        node_id = hashlib.sha256(raw[32:]).digest()[:20].hex()
        ports = NodePorts(
            p2p=_port(toml, "[p2p]"), rpc=_port(toml, "[rpc]"), abci=_proxy_port(toml)
        )
        nodes.append(TestnetNode(home.name, home, node_id, str(val_key["address"]), ports))
    if not nodes:
        raise ChainError(f"{out} holds no node homes; run `r3mes chain testnet` first")
    return nodes


def _port(toml: str, section: str) -> int:
    body = toml.split(section, 1)[1]
    line = next(x for x in body.splitlines() if x.startswith("laddr"))
    return int(line.rsplit(":", 1)[1].rstrip('"'))


def _proxy_port(toml: str) -> int:
    line = next(x for x in toml.splitlines() if x.startswith("proxy_app"))
    return int(line.rsplit(":", 1)[1].rstrip('"'))
