"""ADR-036 arbitrary-message signatures, byte for byte as Keplr's and cosmjs's `signArbitrary`.

The signed bytes are the amino JSON of a StdSignDoc holding one `sign/MsgSignData`:

    {"account_number":"0","chain_id":"","fee":{"amount":[],"gas":"0"},"memo":"",
     "msgs":[{"type":"sign/MsgSignData","value":{"data":"<base64>","signer":"remes1..."}}],
     "sequence":"0"}

keys sorted, no whitespace, `<`, `>` and `&` escaped as cosmjs's `serializeSignDoc` does.
The signature is 64-byte r||s secp256k1 (low-S) over SHA-256 of those bytes; the public key
travels as `{"type": "tendermint/PubKeySecp256k1", "value": base64(33 bytes)}`. Pure
functions: no I/O, used by the backend to verify and by `r3mes wallet login` to sign.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from r3mes.chain.crypto import SigningKey, address_from_pubkey, verify_signature
from r3mes.chain.errors import KeyMaterialError

PUBKEY_TYPE = "tendermint/PubKeySecp256k1"


class Adr036Error(ValueError):
    """A signature or public key that cannot be checked (wrong shape or encoding)."""


@dataclass(frozen=True)
class StdSignature:
    """What a wallet's `signArbitrary` answers."""

    pubkey: bytes
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "pub_key": {"type": PUBKEY_TYPE, "value": base64.b64encode(self.pubkey).decode()},
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, doc: Any) -> StdSignature:
        try:
            pub = doc["pub_key"]
            if pub["type"] != PUBKEY_TYPE:
                raise Adr036Error(f"public key type must be {PUBKEY_TYPE}, not {pub['type']!r}")
            pubkey = base64.b64decode(pub["value"], validate=True)
            signature = base64.b64decode(doc["signature"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise Adr036Error(
                "signature must be {pub_key: {type, value: base64}, signature: base64}"
            ) from exc
        if len(pubkey) != 33 or len(signature) != 64:
            raise Adr036Error("expected a 33-byte public key and a 64-byte signature")
        return cls(pubkey=pubkey, signature=signature)


def sign_bytes(*, signer: str, data: bytes) -> bytes:
    """The exact bytes ADR-036 signs for `data` by `signer`."""
    doc = {
        "account_number": "0",
        "chain_id": "",
        "fee": {"amount": [], "gas": "0"},
        "memo": "",
        "msgs": [
            {
                "type": "sign/MsgSignData",
                "value": {"data": base64.b64encode(data).decode(), "signer": signer},
            }
        ],
        "sequence": "0",
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return text.encode()


def sign(key: SigningKey, data: bytes) -> StdSignature:
    """Sign `data` as Keplr's `signArbitrary(chainId, key.address, data)` would."""
    message = sign_bytes(signer=key.address, data=data)
    return StdSignature(pubkey=key.public_key, signature=key.sign(message))


def signer_matches(signature: StdSignature, address: str) -> bool:
    """Whether `address` is the account of the signature's public key."""
    try:
        return address_from_pubkey(signature.pubkey) == address
    except KeyMaterialError:
        return False


def verify(signature: StdSignature, *, signer: str, data: bytes) -> bool:
    """True iff `signature` is `signer`'s ADR-036 signature over `data`."""
    return signer_matches(signature, signer) and verify_signature(
        pubkey=signature.pubkey,
        message=sign_bytes(signer=signer, data=data),
        signature=signature.signature,
    )
