"""DownloadManager: ordered sources, checksum/CID rejection, retries, atomicity, faults."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

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
from r3mes.storage.unixfs import compute_cid

_path = Path(__file__).parent.parent / "storage" / "kubo_server.py"
_spec = importlib.util.spec_from_file_location("r3mes_test_kubo_server", _path)
assert _spec and _spec.loader
_mod = importlib.util.module_from_spec(_spec)
sys.modules["r3mes_test_kubo_server"] = _mod
_spec.loader.exec_module(_mod)
kubo_server = _mod.kubo_server

PAYLOAD = os.urandom(600_000)
FAST = RetryPolicy(attempts=2, base_delay=0.0)


def record_for(data: bytes, *, kind: str = "dataset", sha: str | None = None) -> ArtifactRecord:
    return ArtifactRecord(
        id="ds",
        kind=kind,
        version="1",
        cid=compute_cid(data),
        sha256=sha or hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def test_local_blockstore_first(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "blocks")
    store.add_bytes(PAYLOAD)
    manager = DownloadManager([BlockstoreFetcher(store)], retry=FAST, progress=True)
    dest = manager.download(record_for(PAYLOAD), tmp_path / "out" / "a.bin")
    assert dest.read_bytes() == PAYLOAD


def test_wrong_bytes_from_one_source_fall_through_to_next(tmp_path: Path) -> None:
    node = tmp_path / "node"
    Blockstore(node).add_bytes(PAYLOAD)
    empty_local = Blockstore(tmp_path / "local")
    with (
        kubo_server(node, mode="wrong-bytes") as (bad_url, _),
        kubo_server(node) as (good_url, _),
    ):
        manager = DownloadManager(
            [
                BlockstoreFetcher(empty_local),
                IpfsFetcher(KuboClient(bad_url, timeout=5, retry=FAST), "bad kubo"),
                IpfsFetcher(KuboClient.gateway(good_url, timeout=5, retry=FAST), "gateway"),
            ],
            retry=FAST,
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
    manager = DownloadManager([BlockstoreFetcher(store), HuggingFaceFetcher()], retry=FAST)
    dest = tmp_path / "out.bin"
    with pytest.raises(DownloadFailed) as info:
        manager.download(record, dest)
    assert "local blockstore: wrong bytes" in str(info.value)
    assert "Hugging Face: not available" in str(info.value)
    assert not dest.exists()
    assert list(tmp_path.glob(".tmp-*")) == []


def test_transient_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    class Flaky:
        name = "flaky"

        def fetch(self, record: ArtifactRecord, dest: Path, on_bytes: object = None) -> None:
            calls.append(1)
            if len(calls) < 3:
                raise RemoteError("http://x", "connection reset")
            dest.write_bytes(PAYLOAD)

    manager = DownloadManager(
        [Flaky()], retry=RetryPolicy(attempts=3, base_delay=0.5), sleep=sleeps.append
    )
    manager.download(record_for(PAYLOAD), tmp_path / "out.bin")
    assert len(calls) == 3 and sleeps == [0.5, 1.0]


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
        DownloadManager([BlockstoreFetcher(store)], retry=FAST).download(record_for(PAYLOAD), dest)
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
            def fetch(self, record, dest, on_bytes=None):
                with dest.open("wb") as handle:
                    for piece in self.store.open_stream(record.cid):
                        handle.write(piece)
                        handle.flush()
                        print("wrote", flush=True)
                        time.sleep(0.5)

        record = ArtifactRecord(id="ds", kind="dataset", version="1", cid={compute_cid(PAYLOAD)!r},
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
    assert all(p.name.startswith(".tmp-") for p in dest.parent.iterdir())


def test_fetchers_report_progress_bytes(tmp_path: Path) -> None:
    node = tmp_path / "node"
    Blockstore(node).add_bytes(PAYLOAD)
    seen: list[int] = []
    BlockstoreFetcher(Blockstore(node)).fetch(record_for(PAYLOAD), tmp_path / "a", seen.append)
    assert sum(seen) == len(PAYLOAD) and len(seen) > 1
    with kubo_server(node) as (url, _):
        seen.clear()
        fetcher = IpfsFetcher(KuboClient(url, timeout=5, retry=FAST), "kubo")
        fetcher.fetch(record_for(PAYLOAD), tmp_path / "b", seen.append)
    assert sum(seen) == len(PAYLOAD)
    assert (tmp_path / "b").read_bytes() == PAYLOAD


def test_hugging_face_source_optional_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = ArtifactRecord(
        **{**record_for(PAYLOAD).to_dict(), "hf_repo": "org/repo", "target_modules": ()}
    )
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    manager = DownloadManager([HuggingFaceFetcher()], retry=FAST)
    with pytest.raises(DownloadFailed, match="Hugging Face: not available"):
        manager.download(record, tmp_path / "x")

    import types

    calls: list[dict[str, object]] = []

    def fake_download(**kw: object) -> str:
        calls.append(kw)
        path = Path(str(kw["local_dir"])) / str(kw["filename"])
        path.parent.mkdir(parents=True)
        path.write_bytes(PAYLOAD)
        return str(path)

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=fake_download)
    )
    assert manager.download(record, tmp_path / "y").read_bytes() == PAYLOAD
    assert calls[0]["repo_id"] == "org/repo" and calls[0]["filename"] == "datasets/ds/1"
    assert not any(p.name.startswith(".hf-") for p in tmp_path.iterdir())
