"""DownloadManager: ordered sources, checksum/CID rejection, retries, atomicity, faults."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.kubo import fault_proxy, kubo_node

from r3mes.registry.download import (
    BlockstoreFetcher,
    DownloadManager,
    HuggingFaceFetcher,
    IpfsFetcher,
)
from r3mes.registry.errors import DownloadFailed
from r3mes.registry.records import ArtifactRecord
from r3mes.storage.blockstore import Blockstore
from r3mes.storage.errors import RemoteError, StorageWriteError
from r3mes.storage.kubo import KuboClient, RetryPolicy
from r3mes.storage.tempfiles import TEMP_PREFIX
from r3mes.storage.unixfs import compute_cid

PAYLOAD = os.urandom(600_000)
FAST = RetryPolicy(attempts=2, base_delay=0.0)


def record_for(data: bytes, *, kind: str = "dataset", sha: str | None = None) -> ArtifactRecord:
    return ArtifactRecord(
        id="ds",
        kind=kind,
        version=1,
        cid=compute_cid(data),
        sha256=sha or hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def test_local_blockstore_first(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "blocks")
    store.add_bytes(PAYLOAD)
    manager = DownloadManager([BlockstoreFetcher(store)], progress=True)
    dest = manager.download(record_for(PAYLOAD), tmp_path / "out" / "a.bin")
    assert dest.read_bytes() == PAYLOAD


def test_wrong_bytes_from_one_source_fall_through_to_next(tmp_path: Path) -> None:
    empty_local = Blockstore(tmp_path / "local")
    with (
        kubo_node(tmp_path / "kubo") as node,
        fault_proxy(node.api_url, mode="wrong-bytes") as (bad_url, _),
    ):
        good_url = node.gateway_url
        KuboClient(node.api_url, timeout=10).add_bytes(PAYLOAD)
        manager = DownloadManager(
            [
                BlockstoreFetcher(empty_local),
                IpfsFetcher(KuboClient(bad_url, timeout=5, retry=FAST), "bad kubo"),
                IpfsFetcher(KuboClient.gateway(good_url, timeout=5, retry=FAST), "gateway"),
            ],
            cache=empty_local,
        )
        dest = manager.download(record_for(PAYLOAD), tmp_path / "out.bin")
    assert dest.read_bytes() == PAYLOAD
    assert empty_local.get_bytes(compute_cid(PAYLOAD)) == PAYLOAD  # cached for next time
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_sha256_mismatch_everywhere_fails_with_reasons(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "blocks")
    store.add_bytes(PAYLOAD)
    record = record_for(PAYLOAD, sha="0" * 64)
    manager = DownloadManager([BlockstoreFetcher(store), HuggingFaceFetcher()])
    dest = tmp_path / "out.bin"
    with pytest.raises(DownloadFailed) as info:
        manager.download(record, dest)
    assert "local blockstore: wrong bytes" in str(info.value)
    assert "Hugging Face: not available" in str(info.value)
    assert not dest.exists()
    assert list(tmp_path.glob(f"{TEMP_PREFIX}*")) == []


def test_a_failing_source_is_tried_once_then_the_next_one(tmp_path: Path) -> None:
    """Retries belong to the network client; the manager moves on instead of multiplying them."""
    calls: list[str] = []

    class Down:
        name = "down"

        def fetch(
            self, record: ArtifactRecord, dest: Path, on_bytes: object = None, **_: object
        ) -> None:
            calls.append("down")
            raise RemoteError("http://x", "connection reset")

    class Good:
        name = "good"

        def fetch(
            self, record: ArtifactRecord, dest: Path, on_bytes: object = None, **_: object
        ) -> None:
            calls.append("good")
            dest.write_bytes(PAYLOAD)

    manager = DownloadManager([Down(), Good()])
    assert manager.download(record_for(PAYLOAD), tmp_path / "out.bin").read_bytes() == PAYLOAD
    assert calls == ["down", "good"]


def _silent_server() -> tuple[str, list[socket.socket], Callable[[], None]]:
    """A server that accepts connections and never answers (Kubo searching the DHT)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    acceptor = threading.Thread(target=accept, name="test-silent-server", daemon=True)
    acceptor.start()

    def close() -> None:
        # a close alone does not wake a thread blocked in accept(); a shutdown does
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()
        acceptor.join(30)
        for conn in held:
            conn.close()

    return f"http://127.0.0.1:{server.getsockname()[1]}", held, close


def test_an_unresponsive_source_costs_one_retry_loop_and_respects_the_deadline(
    tmp_path: Path,
) -> None:
    url, held, close = _silent_server()
    try:
        record = record_for(b"x" * 100)
        # one layer of retries: the client's 3 tries, not 3 x 3
        client = KuboClient(url, timeout=0.2, retry=RetryPolicy(attempts=3, base_delay=0.01))
        start = time.monotonic()
        with pytest.raises(DownloadFailed, match="gave up after 3 tries"):
            DownloadManager([IpfsFetcher(client, "kubo")]).download(record, tmp_path / "a")
        assert len(held) == 3 and time.monotonic() - start < 3.0
        # the per-source deadline cuts a long retry schedule short
        patient = KuboClient(url, timeout=0.5, retry=RetryPolicy(attempts=50, base_delay=0.01))
        manager = DownloadManager([IpfsFetcher(patient, "kubo")], deadline_s=1.0)
        start = time.monotonic()
        with pytest.raises(DownloadFailed, match="deadline"):
            manager.download(record, tmp_path / "b")
        assert time.monotonic() - start < 2.5
    finally:
        close()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_full_disk_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Blockstore(tmp_path / "blocks")
    store.add_bytes(PAYLOAD)
    dest = tmp_path / "out" / "a.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"previous good copy")
    real_replace = os.replace

    def no_space(src: str, dst: str) -> None:
        if str(dst) == str(dest):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(StorageWriteError) as info:
        DownloadManager([BlockstoreFetcher(store)]).download(record_for(PAYLOAD), dest)
    assert "No space left" in str(info.value)
    assert dest.read_bytes() == b"previous good copy"
    assert [p.name for p in dest.parent.iterdir()] == ["a.bin"]


def test_sigkill_mid_download_leaves_no_visible_partial_file(tmp_path: Path) -> None:
    node = tmp_path / "node"
    Blockstore(node).add_bytes(PAYLOAD)
    dest = tmp_path / "out" / "artifact.bin"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from r3mes.registry.download import BlockstoreFetcher, DownloadManager
        from r3mes.registry.records import ArtifactRecord
        from r3mes.storage.blockstore import Blockstore

        class Slow(BlockstoreFetcher):
            def fetch(self, record, dest, on_bytes=None, *, deadline=None):
                with dest.open("wb") as handle:
                    for piece in self.store.open_stream(record.cid):
                        handle.write(piece)
                        handle.flush()
                        print("wrote", flush=True)
                        time.sleep(0.5)

        record = ArtifactRecord(id="ds", kind="dataset", version=1, cid={compute_cid(PAYLOAD)!r},
            sha256={hashlib.sha256(PAYLOAD).hexdigest()!r}, size={len(PAYLOAD)})
        DownloadManager([Slow(Blockstore(Path({str(node)!r})))]).download(
            record, Path({str(dest)!r}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"wrote"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not dest.exists()
    leftovers = list(dest.parent.iterdir())
    assert leftovers and all(p.name.startswith(TEMP_PREFIX) for p in leftovers)
    # once stale, the next download into that folder deletes them
    for leftover in leftovers:
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    DownloadManager([BlockstoreFetcher(Blockstore(node))]).download(record_for(PAYLOAD), dest)
    assert [p.name for p in dest.parent.iterdir()] == ["artifact.bin"]


def test_fetchers_report_progress_bytes(tmp_path: Path) -> None:
    node = tmp_path / "node"
    Blockstore(node).add_bytes(PAYLOAD)
    seen: list[int] = []
    BlockstoreFetcher(Blockstore(node)).fetch(record_for(PAYLOAD), tmp_path / "a", seen.append)
    assert sum(seen) == len(PAYLOAD) and len(seen) > 1
    with kubo_node(tmp_path / "kubo") as kubo:
        seen.clear()
        KuboClient(kubo.api_url, timeout=10).add_bytes(PAYLOAD)
        fetcher = IpfsFetcher(KuboClient(kubo.api_url, timeout=5, retry=FAST), "kubo")
        fetcher.fetch(record_for(PAYLOAD), tmp_path / "b", seen.append)
    assert sum(seen) == len(PAYLOAD)
    assert (tmp_path / "b").read_bytes() == PAYLOAD


class FakeHub:
    """Stands in for the Hugging Face Hub (an external service tests cannot reach)."""

    def __init__(self, *, listed: int | None, body: bytes, endless: bool = False) -> None:
        self.listed = listed
        self.body = body
        self.endless = endless
        self.opened: list[str] = []
        self.served = 0

    def size(self, *, repo: str, filename: str, revision: str | None) -> int | None:
        return self.listed

    @contextlib.contextmanager
    def open(
        self, *, repo: str, filename: str, revision: str | None, timeout: float
    ) -> Iterator[Iterator[bytes]]:
        self.opened.append(f"{repo}/{filename}")

        def pieces() -> Iterator[bytes]:
            while True:
                for i in range(0, len(self.body), 65536):
                    self.served += len(self.body[i : i + 65536])
                    yield self.body[i : i + 65536]
                if not self.endless:
                    return

        yield pieces()


def _hf_record() -> ArtifactRecord:
    return ArtifactRecord(
        **{**record_for(PAYLOAD).to_dict(), "hf_repo": "org/repo", "target_modules": ()}
    )


def test_hugging_face_not_installed_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    manager = DownloadManager([HuggingFaceFetcher()])
    with pytest.raises(DownloadFailed, match="Hugging Face: not available"):
        manager.download(_hf_record(), tmp_path / "x")


def test_hugging_face_download_checked_and_size_capped(tmp_path: Path) -> None:
    record = _hf_record()
    good = FakeHub(listed=len(PAYLOAD), body=PAYLOAD)
    seen: list[int] = []
    fetcher = HuggingFaceFetcher(hub=good)
    fetcher.fetch(record, tmp_path / "direct", seen.append)
    assert sum(seen) == len(PAYLOAD)
    assert DownloadManager([fetcher]).download(record, tmp_path / "y").read_bytes() == PAYLOAD
    assert good.opened[0] == "org/repo/datasets/ds/1"

    # the repo lists another size: refused before a byte is fetched
    bigger = FakeHub(listed=len(PAYLOAD) * 100, body=PAYLOAD)
    with pytest.raises(DownloadFailed, match="lists 60000000 bytes"):
        DownloadManager([HuggingFaceFetcher(hub=bigger)]).download(record, tmp_path / "z")
    assert bigger.opened == []

    # the metadata lies (or lists nothing) and the file never ends: stopped just past the size
    endless = FakeHub(listed=None, body=PAYLOAD, endless=True)
    with pytest.raises(DownloadFailed, match="more than the approved"):
        DownloadManager([HuggingFaceFetcher(hub=endless)]).download(record, tmp_path / "w")
    assert len(PAYLOAD) < endless.served <= len(PAYLOAD) + 65536
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct", "y"]
