from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from r3mes.work.errors import EncodingError
from r3mes.work.varint import MAX_VARINT_BYTES, decode_positions, encode_positions

LIMIT = 1 << 31


def _round_trip(positions: list[int], limit: int = LIMIT) -> np.ndarray:
    data = encode_positions(np.array(positions, dtype=np.int64))
    assert data.dtype == np.uint8
    back = decode_positions(data, limit=limit)
    assert back.dtype == np.int64 and back.tolist() == positions
    return data


def test_empty_round_trips_to_no_bytes() -> None:
    assert _round_trip([]).size == 0


@pytest.mark.parametrize(
    "positions, nbytes",
    [
        ([0], 1),
        ([127], 1),
        ([128], 2),
        ([LIMIT - 1], 5),  # the largest position, as a single (maximal) gap
        ([0, LIMIT - 1], 6),
        ([0, 1, 2, 3], 4),  # consecutive positions are zero gaps
        ([5, 133, 134], 3),  # gap of 127 after subtracting 1 still fits one byte
        ([5, 134], 3),  # a gap of 128 takes two bytes
    ],
)
def test_edge_cases_round_trip(positions: list[int], nbytes: int) -> None:
    assert _round_trip(positions).size == nbytes


def test_exact_bytes_of_known_values() -> None:
    assert encode_positions(np.array([300])).tolist() == [0xAC, 0x02]  # the LEB128 example
    assert encode_positions(np.array([0, 1])).tolist() == [0x00, 0x00]


@given(st.sets(st.integers(min_value=0, max_value=LIMIT - 1), max_size=200))
def test_round_trip_property(values: set[int]) -> None:
    _round_trip(sorted(values))


@pytest.mark.parametrize(
    "data, match",
    [
        ([0x80], "truncated"),
        ([0x01, 0xFF], "truncated"),
        ([0x80, 0x00], "minimal"),
        ([0x81, 0x80, 0x00], "minimal"),
        ([0xFF] * MAX_VARINT_BYTES + [0x01], "longer"),
        ([0x0A], "past"),  # position 10 with a limit of 10
        ([0x05, 0x04], "outside"),  # positions 5 and 10
    ],
)
def test_malformed_varints_are_rejected(data: list[int], match: str) -> None:
    with pytest.raises(EncodingError, match=match):
        decode_positions(np.array(data, dtype=np.uint8), limit=10)


def test_encoder_rejects_unsorted_negative_or_huge_positions() -> None:
    for bad in ([3, 3], [4, 2], [-1], [1 << 40]):
        with pytest.raises(EncodingError):
            encode_positions(np.array(bad, dtype=np.int64))
    with pytest.raises(EncodingError, match="uint8"):
        decode_positions(np.array([1], dtype=np.int32), limit=10)
