"""KuboClient against real Kubo daemons; faults from a proxy in front of them, never a fake Kubo."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kubo import KuboNode, fault_proxy, kubo_node

from r3mes.storage.content import ContentStore
from r3mes.storage.errors import CidMismatch, RemoteError, SizeLimitExceeded, StorageError
from r3mes.storage.kubo import KuboClient, RetryPolicy
from r3mes.storage.multiformats import Cid, parse_cid
from r3mes.storage.unixfs import compute_cid

DATA = bytes(range(256)) * 3000  # 768,000 bytes: 3 leaves
FAST = RetryPolicy(attempts=3, base_delay=0.0)


def _client(url: str, **kw: object) -> KuboClient:
    return KuboClient(url, timeout=5.0, retry=FAST, **kw)  # type: ignore[arg-type]


def _v1(cid: str) -> str:
    """The CIDv1 base32 form `ipfs pin ls --cid-base=base32` prints."""
    parsed = parse_cid(cid)
    return str(Cid(version=1, codec=parsed.codec, digest=parsed.digest))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[KuboNode]:
    with kubo_node(tmp_path / "kubo") as running:
        yield running


@pytest.mark.parametrize("version", [0, 1])
def test_add_cat_pin_round_trip_seen_by_ipfs_pin_ls(
    node: KuboNode, tmp_path: Path, version: int
) -> None:
    with _client(node.api_url) as client:
        assert isinstance(client, ContentStore)
        cid = client.add_bytes(DATA, cid_version=version)
        assert cid == compute_cid(DATA, cid_version=version)
        assert client.get_bytes(cid) == DATA
        assert _v1(cid) in node.pins()
        client.unpin(cid)
        assert _v1(cid) not in node.pins()
        client.pin(cid)
        assert _v1(cid) in node.pins()
        dest = tmp_path / "out.bin"
        assert client.cat_to_file(cid, dest) == len(DATA)
        assert dest.read_bytes() == DATA


@pytest.mark.parametrize("mode", ["wrong-bytes", "truncate"])
def test_bad_bytes_are_rejected_and_nothing_written(
    node: KuboNode, tmp_path: Path, mode: str
) -> None:
    cid = _client(node.api_url).add_bytes(DATA)
    with fault_proxy(node.api_url, mode=mode) as (url, _), _client(url) as client:
        with pytest.raises(CidMismatch) as info:
            client.get_bytes(cid)
        assert cid in str(info.value) and url in str(info.value)
        dest = tmp_path / "dest.bin"
        with pytest.raises(CidMismatch):
            client.cat_to_file(cid, dest)
        assert not dest.exists() and list(tmp_path.glob("*.part")) == []


def test_corrupt_block_in_the_nodes_repo_is_refused_by_cid(node: KuboNode) -> None:
    cid = _client(node.api_url).add_bytes(DATA)
    blocks = sorted((node.repo / "blocks").rglob("*.data"), key=lambda p: p.stat().st_size)
    leaf = blocks[-1]  # a 256 KiB raw leaf
    damaged = bytearray(leaf.read_bytes())
    damaged[1000] ^= 1
    leaf.write_bytes(bytes(damaged))
    with _client(node.api_url) as client, pytest.raises(CidMismatch):
        client.get_bytes(cid)


def test_retries_transient_5xx_then_succeeds(node: KuboNode) -> None:
    with fault_proxy(node.api_url, mode="flaky", fail_times=2) as (url, state):
        cid = _client(url).add_bytes(b"retry me")
        assert cid == compute_cid(b"retry me")
        assert len(state.requests) == 3


def test_gives_up_after_policy_and_does_not_retry_4xx(node: KuboNode) -> None:
    with fault_proxy(node.api_url, mode="flaky", fail_times=10) as (url, state):
        with pytest.raises(RemoteError):
            _client(url).pin(compute_cid(b"x"))
        assert len(state.requests) == FAST.attempts
    with fault_proxy(node.api_url) as (url, state), _client(url) as client:
        with pytest.raises(StorageError):
            client._post_simple("nope", compute_cid(b"x"))  # Kubo's 404: not retried
        assert len(state.requests) == 1


def test_gateway_fallback_when_api_is_down(node: KuboNode) -> None:
    cid = _client(node.api_url).add_bytes(DATA)
    with fault_proxy(node.api_url, mode="down-api") as (api, api_state):
        with fault_proxy(node.gateway_url) as (gateway, gw_state):
            with _client(api, gateway_url=gateway) as client:
                assert client.get_bytes(cid) == DATA
            assert any(p.startswith("/ipfs/") for p in gw_state.requests)
        assert api_state.requests  # the API was tried first


def test_size_limit_and_unreachable_node(node: KuboNode) -> None:
    with _client(node.api_url) as client:
        cid = client.add_bytes(DATA)
        with pytest.raises(SizeLimitExceeded):
            client.get_bytes(cid, max_size=1000)
    with pytest.raises(RemoteError):
        _client("http://127.0.0.1:9").get_bytes(cid)


def test_add_file_streams_large_file(node: KuboNode, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(DATA * 3)
    with _client(node.api_url) as client:
        cid = client.add_file(src, cid_version=0)
    assert cid == compute_cid(DATA * 3, cid_version=0)
    out = tmp_path / "kubo-says.bin"
    node.ipfs("get", cid, "-o", str(out))
    assert out.read_bytes() == DATA * 3


def test_kubo_500_is_final_and_reports_kubos_message(node: KuboNode) -> None:
    with fault_proxy(node.api_url) as (url, state), _client(url) as client:
        with pytest.raises(RemoteError) as info:
            client.unpin(compute_cid(b"never pinned"))
        assert len(state.requests) == 1  # not retried
        assert info.value.status == 500
        assert "not pinned" in str(info.value)


def test_only_502_503_504_and_transport_errors_are_retried(node: KuboNode) -> None:
    with fault_proxy(node.api_url, mode="flaky", fail_times=2) as (url, state):
        cid = _client(url).add_bytes(DATA)  # two 503s, then Kubo's answer
        assert len(state.requests) == 3 and cid == compute_cid(DATA)
    with fault_proxy(node.api_url, mode="down-api") as (url, state):
        with pytest.raises(RemoteError, match="HTTP 500: api down"):
            _client(url).add_bytes(DATA)
        assert len(state.requests) == 1


def test_redirecting_gateway_is_a_clear_error(node: KuboNode, tmp_path: Path) -> None:
    cid = _client(node.api_url).add_bytes(DATA)
    with fault_proxy(node.gateway_url, mode="redirect") as (url, state):
        with KuboClient.gateway(url, timeout=5.0, retry=FAST) as gateway:
            with pytest.raises(RemoteError) as info:
                gateway.get_bytes(cid)
            dest = tmp_path / "out.bin"
            with pytest.raises(RemoteError):
                gateway.cat_to_file(cid, dest)
        assert f"redirected to http://{cid}.ipfs.localhost/" in str(info.value)
        assert "use a path gateway" in str(info.value)
        assert len(state.requests) == 2 and not dest.exists()


def test_missing_cid_holds_until_the_client_gives_up(node: KuboNode) -> None:
    """Kubo searches for a CID nobody has until the caller's timeout or deadline."""
    absent = compute_cid(b"nobody has this")
    client = KuboClient(node.api_url, timeout=0.3, retry=RetryPolicy(attempts=2, base_delay=0.0))
    start = time.monotonic()
    with pytest.raises(RemoteError, match="gave up after 2 tries"):
        client.get_bytes(absent)
    assert 0.5 < time.monotonic() - start < 3.0
    # an overall deadline bounds even a generous retry policy
    patient = KuboClient(node.api_url, timeout=0.3, retry=RetryPolicy(attempts=100, base_delay=0))
    start = time.monotonic()
    with pytest.raises(RemoteError, match="deadline"):
        patient.get_bytes(absent, deadline=time.monotonic() + 1.0)
    assert time.monotonic() - start < 2.0
    client.close()
    patient.close()


def test_bad_urls_name_what_they_are() -> None:
    with pytest.raises(StorageError, match="IPFS API URL 'ftp://x'"):
        KuboClient("ftp://x")
    with pytest.raises(StorageError, match="IPFS gateway URL 'ftp://x'"):
        KuboClient.gateway("ftp://x")
    with pytest.raises(StorageError, match="IPFS gateway URL 'gw'"):
        KuboClient("http://127.0.0.1:5001", gateway_url="gw")
