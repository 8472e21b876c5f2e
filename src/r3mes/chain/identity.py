"""The devnet node's own identity: an Ed25519 key, as a CometBFT node keeps in node_key.json.

CometBFT derives a node id (lower-case hex) and a validator address (upper-case hex) from
the first 20 bytes of SHA-256 of the Ed25519 public key; the embedded devnet is its own
single validator, so both come from this one key. It is created on first start under
home/chain/node_key.json (mode 0600) and kept, so the id is stable across restarts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from r3mes.chain.errors import KeyMaterialError

KEY_TYPE = "tendermint/PrivKeyEd25519"
PUBKEY_TYPE = "tendermint/PubKeyEd25519"


@dataclass(frozen=True)
class NodeIdentity:
    """An Ed25519 node key. Its repr never shows the secret."""

    seed: bytes = field(repr=False)
    """32-byte Ed25519 private seed."""

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise KeyMaterialError("an Ed25519 node key seed is 32 bytes")

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(seed=os.urandom(32))

    @property
    def _key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def _address(self) -> bytes:
        return hashlib.sha256(self.public_key).digest()[:20]

    @property
    def node_id(self) -> str:
        """CometBFT node id: lower-case hex of the key's 20-byte address."""
        return self._address.hex()

    @property
    def validator_address(self) -> str:
        """CometBFT validator address: upper-case hex of the same 20 bytes."""
        return self._address.hex().upper()

    def pub_key_json(self) -> dict[str, str]:
        return {"type": PUBKEY_TYPE, "value": base64.b64encode(self.public_key).decode()}

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def load_or_create_identity(path: Path) -> NodeIdentity:
    """The node key stored at `path` (CometBFT node_key.json layout), created if absent."""
    if path.exists():
        try:
            doc = json.loads(path.read_text())
            raw = base64.b64decode(doc["priv_key"]["value"], validate=True)
            if doc["priv_key"]["type"] != KEY_TYPE or len(raw) != 64:
                raise ValueError("not a 64-byte Ed25519 key")
            identity = NodeIdentity(seed=raw[:32])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyMaterialError(
                f"node key {path} is unreadable ({exc}); delete it to make a new one"
            ) from exc
        if identity.public_key != raw[32:]:
            raise KeyMaterialError(f"node key {path} is corrupt; delete it to make a new one")
        return identity
    identity = NodeIdentity.generate()
    value = base64.b64encode(identity.seed + identity.public_key).decode()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"priv_key": {"type": KEY_TYPE, "value": value}}, handle)
    os.replace(tmp, path)
    return identity
