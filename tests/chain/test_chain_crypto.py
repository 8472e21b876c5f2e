"""Keys, addresses and BIP32 derivation against published Cosmos vectors."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3mes.chain import bech32
from r3mes.chain._ripemd160 import ripemd160 as pure_ripemd160
from r3mes.chain.crypto import (
    SigningKey,
    address_from_pubkey,
    generate_mnemonic,
    key_from_mnemonic,
    parse_path,
    validate_address,
    verify_signature,
)
from r3mes.chain.errors import AddressError, KeyMaterialError

# gotabit/sdk-ts wallet-core test values: a Cosmos key on m/44'/118'/0'/0/0.
VECTOR_MNEMONIC = "dinner proud piano mention silk plunge forest fold trial duck electric define"
VECTOR_SECRET = "7307bb9729ca7139ffbf4dcbfe18cd2d8e07ff93754fb81d34ae5ecc3e6bf51e"
VECTOR_PUBKEY = "0366193cf056fdae59ef3a2d6ba50fde35dfcedeb13825cfe7aaed87d317478b0f"
VECTOR_ADDRESS = "gio1tseh0grt8j8klrdunpudflvy9lfn3rl50zdpu8"


def test_mnemonic_derives_published_cosmos_key_and_address() -> None:
    key = key_from_mnemonic(VECTOR_MNEMONIC)
    assert key.secret.hex() == VECTOR_SECRET
    assert key.public_key.hex() == VECTOR_PUBKEY
    assert address_from_pubkey(key.public_key, prefix="gio") == VECTOR_ADDRESS
    _, payload = bech32.decode(VECTOR_ADDRESS)
    assert key.address == bech32.encode("remes", payload)
    assert key.address.startswith("remes1")


def test_pure_ripemd160_matches_reference() -> None:
    for size in (0, 1, 55, 56, 64, 130):
        data = os.urandom(size)
        assert pure_ripemd160(data) == hashlib.new("ripemd160", data).digest()
    assert pure_ripemd160(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"


def test_signature_roundtrip_and_forgery() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"message")
    assert len(sig) == 64
    assert verify_signature(pubkey=key.public_key, message=b"message", signature=sig)
    assert not verify_signature(pubkey=key.public_key, message=b"messagf", signature=sig)
    other = SigningKey.generate()
    assert not verify_signature(pubkey=other.public_key, message=b"message", signature=sig)
    assert not verify_signature(pubkey=key.public_key, message=b"message", signature=sig[:63])
    # High-S (malleated) signatures are rejected.
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(sig[32:], "big")
    high = sig[:32] + (n - s).to_bytes(32, "big")
    assert not verify_signature(pubkey=key.public_key, message=b"message", signature=high)


def test_secret_never_in_repr() -> None:
    key = key_from_mnemonic(VECTOR_MNEMONIC)
    assert VECTOR_SECRET not in repr(key)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "remes1",
        "cosmos1tseh0grt8j8klrdunpudflvy9lfn3rl5av6rh2",
        "remes1tseh0grt8j8klrdunpudflvy9lfn3rl5av6rh3",
        "Remes1tseh0grt8j8klrdunpudflvy9lfn3rl5av6rh2",
        "x" * 91,
    ],
)
def test_bad_addresses_rejected(bad: str) -> None:
    with pytest.raises(AddressError):
        validate_address(bad)


def test_valid_address_accepted() -> None:
    assert validate_address("remes1tseh0grt8j8klrdunpudflvy9lfn3rl5av6rh2").startswith("remes1")


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=20, max_size=20))
def test_bech32_roundtrip(payload: bytes) -> None:
    assert bech32.decode(bech32.encode("remes", payload)) == ("remes", payload)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100))
def test_bech32_decode_never_crashes(text: str) -> None:
    try:
        bech32.decode(text)
    except AddressError:
        pass


def test_mnemonic_checks() -> None:
    phrase = generate_mnemonic(12)
    assert len(phrase.split()) == 12
    assert key_from_mnemonic(phrase).address == key_from_mnemonic("  " + phrase.upper()).address
    with pytest.raises(KeyMaterialError):
        key_from_mnemonic("abandon " * 11 + "zoo")
    with pytest.raises(KeyMaterialError):
        generate_mnemonic(13)


def test_parse_path() -> None:
    assert parse_path("m/44'/118'/0'/0/0") == [0x8000002C, 0x80000076, 0x80000000, 0, 0]
    for bad in ("44/0", "m/x", "m/2147483648"):
        with pytest.raises(KeyMaterialError):
            parse_path(bad)
