"""KuboClient against a real local HTTP server implementing Kubo's RPC API and a gateway."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from r3mes.storage.content import ContentStore
from r3mes.storage.errors import CidMismatch, RemoteError, SizeLimitExceeded, StorageError
from r3mes.storage.kubo import KuboClient, RetryPolicy
from r3mes.storage.unixfs import compute_cid

_spec = importlib.util.spec_from_file_location(
    "kubo_server", Path(__file__).with_name("kubo_server.py")
)
assert _spec and _spec.loader
kubo_server_mod = importlib.util.module_from_spec(_spec)
sys.modules["kubo_server"] = kubo_server_mod
_spec.loader.exec_module(kubo_server_mod)
kubo_server = kubo_server_mod.kubo_server

DATA = bytes(range(256)) * 3000  # 768,000 bytes: 3 leaves
FAST = RetryPolicy(attempts=3, base_delay=0.0)


def _client(url: str, **kw: object) -> KuboClient:
    return KuboClient(url, timeout=5.0, retry=FAST, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [0, 1])
def test_add_cat_pin_round_trip(tmp_path: Path, version: int) -> None:
    with kubo_server(tmp_path / "node") as (url, state), _client(url) as client:
        assert isinstance(client, ContentStore)
        cid = client.add_bytes(DATA, cid_version=version)
        assert cid == compute_cid(DATA, cid_version=version)
        assert client.get_bytes(cid) == DATA
        client.unpin(cid)
        assert state.store.pins() == []
        client.pin(cid)
        assert state.store.pins() == [cid]
        dest = tmp_path / "out.bin"
        assert client.cat_to_file(cid, dest) == len(DATA)
        assert dest.read_bytes() == DATA


def test_wrong_bytes_are_rejected_and_nothing_written(tmp_path: Path) -> None:
    good_store_root = tmp_path / "node"
    with kubo_server(good_store_root) as (url, _):
        cid = _client(url).add_bytes(DATA)
    with kubo_server(good_store_root, mode="wrong-bytes") as (url, _), _client(url) as client:
        with pytest.raises(CidMismatch) as info:
            client.get_bytes(cid)
        assert cid in str(info.value) and url in str(info.value)
        dest = tmp_path / "dest.bin"
        with pytest.raises(CidMismatch):
            client.cat_to_file(cid, dest)
        assert not dest.exists() and list(tmp_path.glob("*.part")) == []


def test_retries_transient_5xx_then_succeeds(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "node", mode="flaky", fail_times=2) as (url, state):
        cid = _client(url).add_bytes(b"retry me")
        assert cid == compute_cid(b"retry me")
        assert len(state.requests) == 3


def test_gives_up_after_policy_and_does_not_retry_4xx(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "node", mode="flaky", fail_times=10) as (url, state):
        with pytest.raises(RemoteError):
            _client(url).pin(compute_cid(b"x"))
        assert len(state.requests) == FAST.attempts
    with kubo_server(tmp_path / "node2") as (url, state), _client(url) as client:
        with pytest.raises(StorageError):
            client._post_simple("nope", compute_cid(b"x"))  # 404: not retried
        assert len(state.requests) == 1


def test_gateway_fallback_when_api_is_down(tmp_path: Path) -> None:
    root = tmp_path / "node"
    with kubo_server(root) as (url, _):
        cid = _client(url).add_bytes(DATA)
    with kubo_server(root, mode="down-api") as (url, state):
        with _client(url, gateway_url=url) as client:
            assert client.get_bytes(cid) == DATA
        assert any(p.startswith("/ipfs/") for p in state.requests)


def test_size_limit_and_unreachable_node(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "node") as (url, _), _client(url) as client:
        cid = client.add_bytes(DATA)
        with pytest.raises(SizeLimitExceeded):
            client.get_bytes(cid, max_size=1000)
    with pytest.raises(RemoteError):
        _client("http://127.0.0.1:9").get_bytes(cid)
    with pytest.raises(StorageError):
        KuboClient("ftp://example")


def test_add_file_streams_large_file(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(DATA * 3)
    with kubo_server(tmp_path / "node") as (url, state), _client(url) as client:
        cid = client.add_file(src, cid_version=0)
        assert cid == compute_cid(DATA * 3, cid_version=0)
        assert state.store.get_bytes(cid) == DATA * 3
