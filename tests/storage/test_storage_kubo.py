"""KuboClient against a real local HTTP server implementing Kubo's RPC API and a gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.kubo_server import kubo_server
from support.net import free_port

from r3mes.storage.content import ContentStore
from r3mes.storage.errors import CidMismatch, RemoteError, SizeLimitExceeded, StorageError
from r3mes.storage.kubo import KuboClient, RetryPolicy
from r3mes.storage.unixfs import compute_cid

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


def test_kubo_500_is_final_and_reports_kubos_message(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "node") as (url, state), _client(url) as client:
        with pytest.raises(RemoteError) as info:
            client.unpin(compute_cid(b"never pinned"))
        assert len(state.requests) == 1  # not retried
        assert info.value.status == 500
        assert "not pinned or pinned indirectly" in str(info.value)


def test_only_502_503_504_and_transport_errors_are_retried(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "node", mode="flaky", fail_times=2) as (url, state):
        cid = _client(url).add_bytes(DATA)  # two 503s, then success
        assert len(state.requests) == 3 and cid == compute_cid(DATA)
    with kubo_server(tmp_path / "node2", mode="down-api") as (url, state):
        with pytest.raises(RemoteError, match="HTTP 500: down"):
            _client(url).add_bytes(DATA)
        assert len(state.requests) == 1


def test_redirecting_gateway_is_a_clear_error(tmp_path: Path) -> None:
    with kubo_server(tmp_path / "node", mode="redirect") as (url, state):
        cid = state.store.add_bytes(DATA)
        with KuboClient.gateway(url, timeout=5.0, retry=FAST) as gateway:
            with pytest.raises(RemoteError) as info:
                gateway.get_bytes(cid)
            dest = tmp_path / "out.bin"
            with pytest.raises(RemoteError):
                gateway.cat_to_file(cid, dest)
        assert f"redirected to http://{cid}.ipfs.localhost:8080/" in str(info.value)
        assert "use a path gateway" in str(info.value)
        assert len(state.requests) == 2 and not dest.exists()


def test_missing_cid_holds_until_the_client_gives_up(tmp_path: Path) -> None:
    absent = compute_cid(b"nobody has this")
    with kubo_server(tmp_path / "node") as (url, state):
        client = KuboClient(url, timeout=0.3, retry=RetryPolicy(attempts=2, base_delay=0.0))
        start = time.monotonic()
        with pytest.raises(RemoteError, match="gave up after 2 tries"):
            client.get_bytes(absent)
        assert 0.5 < time.monotonic() - start < 3.0
        # an overall deadline bounds even a generous retry policy
        patient = KuboClient(url, timeout=0.3, retry=RetryPolicy(attempts=100, base_delay=0.0))
        start = time.monotonic()
        with pytest.raises(RemoteError, match="deadline"):
            patient.get_bytes(absent, deadline=time.monotonic() + 1.0)
        assert time.monotonic() - start < 2.0
        client.close()
        patient.close()
    with kubo_server(tmp_path / "node", missing_block_s=0.1) as (url, state):
        with _client(url, gateway_url=url) as both, pytest.raises(RemoteError, match="504"):
            both.get_bytes(absent)  # Kubo's own timeout: 500 from cat, 504 from the gateway


def test_bad_urls_name_what_they_are() -> None:
    with pytest.raises(StorageError, match="IPFS API URL 'ftp://x'"):
        KuboClient("ftp://x")
    with pytest.raises(StorageError, match="IPFS gateway URL 'ftp://x'"):
        KuboClient.gateway("ftp://x")
    with pytest.raises(StorageError, match="IPFS gateway URL 'gw'"):
        KuboClient("http://127.0.0.1:5001", gateway_url="gw")


@pytest.mark.skipif(shutil.which("ipfs") is None, reason="no `ipfs` (Kubo) binary on PATH")
def test_against_a_real_kubo_node(tmp_path: Path) -> None:
    """The same calls against a real, offline Kubo daemon (skipped where none is installed)."""
    env = {**os.environ, "IPFS_PATH": str(tmp_path / "ipfs")}
    subprocess.run(["ipfs", "init", "--profile=test"], env=env, check=True, capture_output=True)
    api_port, gw_port = free_port(), free_port()
    for key, value in (
        ("Addresses.API", f"/ip4/127.0.0.1/tcp/{api_port}"),
        ("Addresses.Gateway", f"/ip4/127.0.0.1/tcp/{gw_port}"),
    ):
        subprocess.run(["ipfs", "config", key, value], env=env, check=True)
    daemon = subprocess.Popen(
        ["ipfs", "daemon", "--offline"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert daemon.stdout is not None
        for line in daemon.stdout:
            if "Daemon is ready" in line:
                break
        api, gw = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{gw_port}"
        with KuboClient(api, gateway_url=gw, timeout=10.0, retry=FAST) as client:
            for version in (0, 1):
                cid = client.add_bytes(DATA * 2, cid_version=version)
                assert cid == compute_cid(DATA * 2, cid_version=version)
                assert client.get_bytes(cid) == DATA * 2
            with pytest.raises(RemoteError) as info:
                client.unpin(compute_cid(b"never pinned"))
            assert info.value.status == 500 and "not pinned" in str(info.value)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
