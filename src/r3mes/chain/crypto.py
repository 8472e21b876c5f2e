"""Keys and addresses: secp256k1 signing, Cosmos-style `remes1...` addresses, BIP39/BIP32.

An address is bech32(`remes`, RIPEMD160(SHA256(33-byte compressed public key))), exactly as
Cosmos SDK derives `cosmos1...` addresses, so the same mnemonic yields the same 20 bytes.
Signatures are 64-byte compact (r || s, low-S) ECDSA over SHA-256 of the message.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

import coincurve
from coincurve.ecdsa import cdata_to_der, deserialize_compact
from mnemonic import Mnemonic

from r3mes.chain import bech32
from r3mes.chain._ripemd160 import ripemd160 as _pure_ripemd160
from r3mes.chain.errors import AddressError, KeyMaterialError

ADDRESS_PREFIX = "remes"
"""Human-readable bech32 prefix of every R3MES account address."""
DEFAULT_HD_PATH = "m/44'/118'/0'/0/0"
"""BIP44 path of Cosmos coin type 118, account 0, first address."""
PUBKEY_SIZE = 33
SIGNATURE_SIZE = 64
_CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HARDENED = 0x80000000


def ripemd160(data: bytes) -> bytes:
    """RIPEMD-160 via OpenSSL when available, else a pure-Python implementation."""
    try:
        return hashlib.new("ripemd160", data).digest()
    except ValueError:
        return _pure_ripemd160(data)


@functools.lru_cache(maxsize=65536)
def address_from_pubkey(pubkey: bytes, prefix: str = ADDRESS_PREFIX) -> str:
    """The bech32 account address of a 33-byte compressed secp256k1 public key."""
    if len(pubkey) != PUBKEY_SIZE or pubkey[0] not in (2, 3):
        raise KeyMaterialError("public key must be 33 bytes, compressed secp256k1")
    return bech32.encode(prefix, ripemd160(hashlib.sha256(pubkey).digest()))


@functools.lru_cache(maxsize=65536)
def validate_address(address: str, prefix: str = ADDRESS_PREFIX) -> str:
    """Return `address` normalised to lower case, or raise AddressError if it is not valid."""
    hrp, payload = bech32.decode(address)
    if hrp != prefix:
        raise AddressError(f"address {address!r} must start with {prefix}1")
    if len(payload) != 20:
        raise AddressError(f"address {address!r} must encode 20 bytes, not {len(payload)}")
    return address.lower()


def verify_signature(*, pubkey: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` (64-byte compact, low-S) signs SHA-256(`message`) under `pubkey`."""
    if len(signature) != SIGNATURE_SIZE or len(pubkey) != PUBKEY_SIZE:
        return False
    try:
        key = coincurve.PublicKey(pubkey)
        der = cdata_to_der(deserialize_compact(signature))
        return bool(key.verify(der, message, hasher=_sha256))
    except (ValueError, TypeError):
        return False


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class SigningKey:
    """A secp256k1 private key. Its repr never shows the secret."""

    secret: bytes = field(repr=False)
    """32-byte private scalar."""

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise KeyMaterialError("private key must be 32 bytes")
        scalar = int.from_bytes(self.secret, "big")
        if not 0 < scalar < _CURVE_ORDER:
            raise KeyMaterialError("private key is outside the secp256k1 range")

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key from the OS random source."""
        return cls(secret=coincurve.PrivateKey().secret)

    @property
    def public_key(self) -> bytes:
        """33-byte compressed public key."""
        return bytes(coincurve.PrivateKey(self.secret).public_key.format(compressed=True))

    @property
    def address(self) -> str:
        return address_from_pubkey(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """64-byte compact low-S ECDSA signature over SHA-256(`message`)."""
        recoverable = coincurve.PrivateKey(self.secret).sign_recoverable(message, hasher=_sha256)
        return bytes(recoverable[:64])


def generate_mnemonic(words: int = 24) -> str:
    """A new English BIP39 mnemonic of 12, 15, 18, 21 or 24 words."""
    strengths = {12: 128, 15: 160, 18: 192, 21: 224, 24: 256}
    if words not in strengths:
        raise KeyMaterialError("a mnemonic has 12, 15, 18, 21 or 24 words")
    entropy = secrets.token_bytes(strengths[words] // 8)
    return str(Mnemonic("english").to_mnemonic(entropy))


def normalize_mnemonic(mnemonic: str) -> str:
    """Collapse whitespace and lower-case; raise if the BIP39 checksum fails."""
    phrase = " ".join(mnemonic.lower().split())
    if not Mnemonic("english").check(phrase):
        raise KeyMaterialError("mnemonic is not a valid English BIP39 phrase; check the words")
    return phrase


def key_from_mnemonic(
    mnemonic: str, *, passphrase: str = "", path: str = DEFAULT_HD_PATH
) -> SigningKey:
    """Derive the signing key of `mnemonic` at BIP32 `path` (default m/44'/118'/0'/0/0)."""
    seed = Mnemonic.to_seed(normalize_mnemonic(mnemonic), passphrase=passphrase)
    return SigningKey(secret=derive_bip32(seed, path))


def parse_path(path: str) -> list[int]:
    """Parse "m/44'/118'/0'/0/0" into child indexes (hardened ones have bit 31 set)."""
    parts = path.strip().split("/")
    if not parts or parts[0] != "m":
        raise KeyMaterialError(f"derivation path {path!r} must start with m/")
    out: list[int] = []
    for part in parts[1:]:
        hardened = part.endswith(("'", "h", "H"))
        digits = part[:-1] if hardened else part
        if not digits.isdigit() or int(digits) >= _HARDENED:
            raise KeyMaterialError(f"derivation path {path!r} has a bad component {part!r}")
        out.append(int(digits) + (_HARDENED if hardened else 0))
    return out


def derive_bip32(seed: bytes, path: str) -> bytes:
    """BIP32 private-key derivation of `path` from a BIP39 seed; returns the 32-byte secret."""
    digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
    key, chain_code = digest[:32], digest[32:]
    for index in parse_path(path):
        if index & _HARDENED:
            data = b"\x00" + key + index.to_bytes(4, "big")
        else:
            pub = coincurve.PrivateKey(key).public_key.format(compressed=True)
            data = pub + index.to_bytes(4, "big")
        digest = hmac.new(chain_code, data, hashlib.sha512).digest()
        tweak = int.from_bytes(digest[:32], "big")
        child = (tweak + int.from_bytes(key, "big")) % _CURVE_ORDER
        if tweak >= _CURVE_ORDER or child == 0:
            raise KeyMaterialError(f"index {index} of {path!r} yields an invalid key; use another")
        key, chain_code = child.to_bytes(32, "big"), digest[32:]
    return key
