"""CIDs and the multiformats they are built from: varints, multihash, base32, base58btc.

Only what IPFS file CIDs need: sha2-256 multihashes, the `dag-pb` (0x70) and `raw` (0x55)
codecs, CIDv0 (bare base58btc multihash, implicitly dag-pb) and CIDv1 in base32 lower case
without padding (multibase prefix "b").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from r3mes.storage.errors import InvalidCid

SHA2_256 = 0x12
DAG_PB = 0x70
RAW = 0x55
_CODECS = {DAG_PB, RAW}
_MAX_CID_CHARS = 200

_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_INDEX = {c: i for i, c in enumerate(_B32_ALPHABET)}
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, as used by protobuf and multiformats."""
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read one varint at `pos`; return (value, next position). At most 10 bytes."""
    value = 0
    for i in range(10):
        if pos + i >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("varint longer than 10 bytes")


def b32encode(data: bytes) -> str:
    """RFC 4648 base32, lower case, no padding."""
    bits = 0
    acc = 0
    out = []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append(_B32_ALPHABET[(acc >> bits) & 0x1F])
    if bits:
        out.append(_B32_ALPHABET[(acc << (5 - bits)) & 0x1F])
    return "".join(out)


def b32decode(text: str) -> bytes:
    """Inverse of `b32encode`; rejects characters outside the lower-case alphabet."""
    bits = 0
    acc = 0
    out = bytearray()
    for ch in text:
        if ch not in _B32_INDEX:
            raise ValueError(f"invalid base32 character {ch!r}")
        acc = ((acc << 5) | _B32_INDEX[ch]) & 0xFFFF
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits >= 5 or (acc & ((1 << bits) - 1)):
        raise ValueError("non-canonical base32 padding bits")
    return bytes(out)


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (leading zero bytes become '1')."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    num = int.from_bytes(data, "big")
    out = []
    while num:
        num, rem = divmod(num, 58)
        out.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of `b58encode`."""
    num = 0
    for ch in text:
        if ch not in _B58_INDEX:
            raise ValueError(f"invalid base58 character {ch!r}")
        num = num * 58 + _B58_INDEX[ch]
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\x00" * zeros + body


@dataclass(frozen=True)
class Cid:
    """A content identifier for a sha2-256 block."""

    version: int
    """0 (base58 'Qm...', always dag-pb) or 1 (base32 'b...')."""
    codec: int
    """Multicodec of the block: DAG_PB (0x70) or RAW (0x55)."""
    digest: bytes
    """The 32-byte sha2-256 digest of the block's bytes."""

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise InvalidCid(repr(self), "version must be 0 or 1")
        if self.codec not in _CODECS:
            raise InvalidCid(repr(self), f"unsupported codec 0x{self.codec:x}")
        if self.version == 0 and self.codec != DAG_PB:
            raise InvalidCid(repr(self), "CIDv0 is always dag-pb")
        if len(self.digest) != 32:
            raise InvalidCid(repr(self), "sha2-256 digest must be 32 bytes")

    @classmethod
    def of_block(cls, data: bytes, *, version: int, codec: int) -> Cid:
        """The CID of `data` stored as one block."""
        return cls(version=version, codec=codec, digest=hashlib.sha256(data).digest())

    @property
    def multihash(self) -> bytes:
        return bytes([SHA2_256, 32]) + self.digest

    def to_bytes(self) -> bytes:
        """Binary form, as embedded in dag-pb links."""
        if self.version == 0:
            return self.multihash
        return b"\x01" + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + b32encode(self.to_bytes())

    def matches(self, data: bytes) -> bool:
        """True when `data` hashes to this CID's digest."""
        return hashlib.sha256(data).digest() == self.digest


def cid_from_bytes(raw: bytes) -> Cid:
    """Parse a binary CID (from a dag-pb link)."""
    if len(raw) == 34 and raw[:2] == bytes([SHA2_256, 32]):
        return Cid(version=0, codec=DAG_PB, digest=raw[2:])
    try:
        version, pos = decode_varint(raw, 0)
        codec, pos = decode_varint(raw, pos)
        hash_code, pos = decode_varint(raw, pos)
        length, pos = decode_varint(raw, pos)
    except ValueError as exc:
        raise InvalidCid(raw.hex(), str(exc)) from exc
    if version != 1:
        raise InvalidCid(raw.hex(), f"unsupported CID version {version}")
    if hash_code != SHA2_256 or length != 32 or len(raw) != pos + 32:
        raise InvalidCid(raw.hex(), "only sha2-256 multihashes are supported")
    return Cid(version=1, codec=codec, digest=raw[pos:])


def parse_cid(text: str) -> Cid:
    """Parse a CID string: CIDv0 ('Qm...') or CIDv1 in base32 ('b...')."""
    if not isinstance(text, str) or not text:
        raise InvalidCid(str(text), "empty or not a string")
    if len(text) > _MAX_CID_CHARS:
        raise InvalidCid(text, "too long")
    if len(text) == 46 and text.startswith("Qm"):
        try:
            raw = b58decode(text)
        except ValueError as exc:
            raise InvalidCid(text, str(exc)) from exc
        return cid_from_bytes(raw)
    if text.startswith("b"):
        try:
            raw = b32decode(text[1:])
        except ValueError as exc:
            raise InvalidCid(text, str(exc)) from exc
        cid = cid_from_bytes(raw)
        if cid.version != 1:
            raise InvalidCid(text, "base32 CIDs must be version 1")
        return cid
    raise InvalidCid(text, "expected 'Qm...' (v0) or 'b...' (v1, base32)")


def is_cid(text: str) -> bool:
    """True when `text` parses as a supported CID."""
    try:
        parse_cid(text)
    except InvalidCid:
        return False
    return True
