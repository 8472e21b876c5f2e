"""`free_port`: ports outside the kernel's ephemeral range (which any outgoing connection may
take between the pick and the bind), never one that is in use."""

from __future__ import annotations

import socket
from collections import deque
from pathlib import Path

import pytest

from r3mes.runtime import net


def test_picks_below_the_ephemeral_range_and_bindable() -> None:
    start = net.ephemeral_start()
    for _ in range(50):
        port = net.free_port()
        assert net.LOWEST <= port < start
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_never_a_port_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setattr(net, "ephemeral_start", lambda: taken + 1)
        monkeypatch.setattr(net, "LOWEST", taken - 1)  # two candidates: taken-1 and taken
        for _ in range(20):
            assert net.free_port() != taken


def test_ephemeral_range_is_read_or_defaults(tmp_path: Path) -> None:
    good = tmp_path / "range"
    good.write_text("40000\t60999\n")
    assert net.ephemeral_start(good) == 40_000
    bad = tmp_path / "bad"
    bad.write_text("nonsense")
    assert net.ephemeral_start(bad) == 32_768
    assert net.ephemeral_start(tmp_path / "missing") == 32_768


def test_one_process_never_gets_the_same_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A testnet picks a dozen ports before any is bound: two equal picks made one node fail
    with "bind: address already in use". 60 picks from 100 ports collide almost surely
    unless the picker remembers what it gave."""
    monkeypatch.setattr(net, "_given", deque(maxlen=net.REMEMBERED))
    monkeypatch.setattr(net, "LOWEST", 21_000)
    monkeypatch.setattr(net, "ephemeral_start", lambda: 21_100)
    picks = [net.free_port() for _ in range(60)]
    assert len(set(picks)) == len(picks)
