"""Bech32 (BIP-173) encoding of 20-byte account addresses, prefix `remes`.

Only the original bech32 checksum is implemented: Cosmos addresses use it, not bech32m.
"""

from __future__ import annotations

from r3mes.chain.errors import AddressError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
MAX_LENGTH = 90


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GENERATOR[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _create_checksum(hrp: str, data: list[int]) -> list[int]:
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ 1
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]


def convert_bits(data: bytes | list[int], *, from_bits: int, to_bits: int, pad: bool) -> list[int]:
    """Regroup a sequence of `from_bits`-bit integers into `to_bits`-bit integers."""
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        if value < 0 or value >> from_bits:
            raise AddressError(f"invalid {from_bits}-bit value {value}")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise AddressError("invalid padding in bech32 data")
    return out


def encode(hrp: str, payload: bytes) -> str:
    """Encode `payload` bytes under human-readable prefix `hrp`."""
    data = convert_bits(payload, from_bits=8, to_bits=5, pad=True)
    combined = data + _create_checksum(hrp, data)
    return hrp + "1" + "".join(CHARSET[d] for d in combined)


def decode(text: str) -> tuple[str, bytes]:
    """Decode a bech32 string into (hrp, payload bytes); raise AddressError if invalid."""
    if not isinstance(text, str) or not text or len(text) > MAX_LENGTH:
        raise AddressError("address must be a bech32 string of at most 90 characters")
    if text.lower() != text and text.upper() != text:
        raise AddressError("address mixes upper and lower case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise AddressError(f"address {text!r} has no valid separator")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp) or any(c not in CHARSET for c in rest):
        raise AddressError(f"address {text!r} contains invalid characters")
    data = [CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + data) != 1:
        raise AddressError(f"address {text!r} has a bad checksum")
    payload = bytes(convert_bits(data[:-6], from_bits=5, to_bits=8, pad=False))
    return hrp, payload
