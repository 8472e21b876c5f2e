"""CIDs and bases: known IPFS vectors, round trips, rejection of malformed input."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r3mes.storage.errors import InvalidCid
from r3mes.storage.multiformats import (
    DAG_PB,
    RAW,
    Cid,
    b32decode,
    b32encode,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
    is_cid,
    parse_cid,
)


@given(st.binary(max_size=80))
def test_base32_matches_rfc4648_and_round_trips(data: bytes) -> None:
    expected = base64.b32encode(data).decode().lower().rstrip("=")
    assert b32encode(data) == expected
    assert b32decode(expected) == data


@given(st.binary(max_size=60))
def test_base58_round_trips(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


def test_base58_known_vector() -> None:
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    assert b58encode(b"\x00\x00\x01") == "112"


@given(st.integers(min_value=0, max_value=2**63))
def test_varint_round_trips(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded, 0) == (value, len(encoded))


def test_cid_string_round_trips_both_versions() -> None:
    for text in (
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        "bafybeihmf37wcuvtx4hpu7he5zl5qaf2ineo2lqlfrapokkm5zzw7zyhvm",
    ):
        assert str(parse_cid(text)) == text
    assert parse_cid("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku").codec == RAW
    assert parse_cid("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH").codec == DAG_PB


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hello",
        "Qm" + "0" * 44,  # '0' is not base58
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQ",  # one char short
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk",  # truncated
        "BAFKREIHDWDCEFGH4DQKJV67UZCMW7OJEE6XEDZDETOJUZJEVTENXQUVYKU",
        "b" + "a" * 300,
        "../../etc/passwd",
    ],
)
def test_parse_cid_rejects_malformed(bad: str) -> None:
    with pytest.raises(InvalidCid):
        parse_cid(bad)
    assert not is_cid(bad)


def test_cid_rejects_wrong_digest_length_and_codec() -> None:
    with pytest.raises(InvalidCid):
        Cid(version=1, codec=RAW, digest=b"\x00" * 31)
    with pytest.raises(InvalidCid):
        Cid(version=0, codec=RAW, digest=b"\x00" * 32)
    with pytest.raises(InvalidCid):
        Cid(version=1, codec=0x71, digest=b"\x00" * 32)
