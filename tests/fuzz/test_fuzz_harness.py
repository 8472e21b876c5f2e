"""The fuzz property itself: an untyped exception or a slow case fails, typed errors pass."""

from __future__ import annotations

import time

import pytest
from hypothesis import strategies as st

from fuzz import harness
from fuzz.harness import Stats, check, fuzz
from r3mes.errors import R3mesError


def _decoder(data: bytes) -> object:
    if data[:1] == b"k":
        raise KeyError("untyped")
    if data[:1] == b"t":
        raise R3mesError("typed")
    return data


def test_typed_errors_and_values_pass() -> None:
    stats = Stats()
    for data in (b"t1", b"ok"):
        check("d", _decoder, data, (R3mesError,), stats)
    assert stats.cases == 2 and stats.typed_errors == 1


def test_an_untyped_exception_fails_with_the_input() -> None:
    with pytest.raises(AssertionError, match=r"raised untyped KeyError.*b'k"):
        check("d", _decoder, b"k!", (R3mesError,), Stats())


def test_a_slow_case_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "CASE_SECONDS", 0.05)  # spin 0.1 s, not over 2 s

    def spin(_: object) -> None:
        end = time.process_time() + 0.1
        while time.process_time() < end:
            pass

    with pytest.raises(AssertionError, match="took 0.1"):
        check("d", spin, b"", (R3mesError,), Stats())


def test_fuzz_finds_the_untyped_exception() -> None:
    with pytest.raises(AssertionError, match="untyped KeyError"):
        fuzz("d", st.sampled_from([b"ok", b"t", b"k"]), _decoder, (R3mesError,))
