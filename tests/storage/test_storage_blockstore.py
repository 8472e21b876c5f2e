"""The local blockstore: add/read round trips, verify-on-read, pins, GC, faults."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from r3mes.storage.blockstore import Blockstore, NotPinned, atomic_write
from r3mes.storage.content import ContentStore
from r3mes.storage.errors import (
    BlockNotFound,
    CidMismatch,
    InvalidCid,
    SizeLimitExceeded,
    StorageWriteError,
)
from r3mes.storage.tempfiles import TEMP_PREFIX
from r3mes.storage.unixfs import compute_cid

BIG = bytes(range(256)) * 4100  # 1,049,600 bytes: 5 leaves


@pytest.fixture
def store(tmp_path: Path) -> Blockstore:
    return Blockstore(tmp_path / "blocks")


def test_blockstore_is_a_content_store(store: Blockstore) -> None:
    assert isinstance(store, ContentStore)


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("data", [b"", b"hello world\n", BIG])
def test_add_then_read_round_trips_with_ipfs_cid(
    store: Blockstore, data: bytes, version: int
) -> None:
    cid = store.add_bytes(data, cid_version=version)
    assert cid == compute_cid(data, cid_version=version)
    assert store.get_bytes(cid, max_size=len(data)) == data
    assert b"".join(store.open_stream(cid)) == data
    assert store.has(cid)
    assert store.size(cid) == len(data)


def test_add_file_streams_and_matches_add_bytes(store: Blockstore, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(BIG)
    assert store.add_file(src) == compute_cid(BIG)
    out = tmp_path / "out" / "copy.bin"
    assert store.cat_to_file(compute_cid(BIG), out) == len(BIG)
    assert out.read_bytes() == BIG


def test_get_bytes_enforces_max_size_before_reading(store: Blockstore) -> None:
    cid = store.add_bytes(BIG)
    with pytest.raises(SizeLimitExceeded):
        store.get_bytes(cid, max_size=1000)


def test_corrupt_block_is_detected_on_read(store: Blockstore, tmp_path: Path) -> None:
    cid = store.add_bytes(BIG)
    leaf = next(p for p in (tmp_path / "blocks" / "data").rglob("bafkrei*"))
    leaf.write_bytes(b"x" * leaf.stat().st_size)
    with pytest.raises(CidMismatch) as info:
        store.get_bytes(cid)
    assert "local blockstore" in str(info.value)
    assert store.has(cid) and not store.verify(cid)
    assert store.add_bytes(BIG) == cid  # re-adding the content repairs the bad block
    assert store.verify(cid) and store.get_bytes(cid) == BIG


def test_missing_block_and_bad_cid_are_clear_errors(store: Blockstore) -> None:
    with pytest.raises(BlockNotFound):
        store.get_bytes(compute_cid(b"never added"))
    with pytest.raises(InvalidCid):
        store.get_bytes("../../etc/passwd")
    assert not store.has("not-a-cid")


def test_pin_gc_keeps_pinned_dags_and_removes_the_rest(store: Blockstore) -> None:
    kept = store.add_bytes(BIG)
    dropped = store.add_bytes(b"temporary" * 50000, pin=False)
    shared = store.add_bytes(BIG[:262144], pin=False)  # its only leaf is also a leaf of `kept`
    result = store.gc()
    assert result.removed >= 2 and result.freed_bytes > 0
    assert store.get_bytes(kept) == BIG
    assert store.has(shared)  # shared raw leaf is reachable from the pin
    assert not store.has(dropped)
    assert store.pins() == [kept]
    store.unpin(kept)
    assert store.pins() == []
    store.gc()
    assert not store.has(kept)


def test_pin_requires_complete_dag_and_unpin_requires_pin(store: Blockstore) -> None:
    with pytest.raises(BlockNotFound):
        store.pin(compute_cid(b"absent"))
    cid = store.add_bytes(b"x", pin=False)
    with pytest.raises(NotPinned):
        store.unpin(cid)
    store.pin(cid)
    assert store.pins() == [cid]


def test_put_block_rejects_wrong_bytes(store: Blockstore) -> None:
    cid = compute_cid(b"abc")
    with pytest.raises(CidMismatch):
        store.put_block(cid, b"abd")
    store.put_block(cid, b"abc")
    assert store.get_bytes(cid) == b"abc"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk_leaves_store_intact(
    store: Blockstore, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    before = store.add_bytes(b"already stored")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageWriteError) as info:
        store.add_bytes(BIG)
    assert os.strerror(code) in str(info.value)
    monkeypatch.undo()
    assert store.get_bytes(before) == b"already stored"
    assert not store.has(compute_cid(BIG))
    leftovers = list(store.root.rglob("*.part"))
    assert leftovers == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    with pytest.raises(OSError):
        atomic_write(target, _raising_iter())
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def _raising_iter() -> Iterator[bytes]:
    yield b"partial"
    raise OSError(errno.ENOSPC, "No space left on device")


def test_sigkill_during_cat_leaves_no_partial_file(tmp_path: Path) -> None:
    """A reader killed mid-write never leaves bytes at the destination path."""
    store = Blockstore(tmp_path / "blocks")
    payload = os.urandom(3 * 1024 * 1024)
    cid = store.add_bytes(payload)
    dest = tmp_path / "out" / "artifact.bin"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from r3mes.storage.blockstore import Blockstore
        import r3mes.storage.blockstore as bs
        store = Blockstore(Path({str(tmp_path / "blocks")!r}))
        def slow(cid):
            stream = store.open_stream(cid)
            for piece in stream:
                print("piece", flush=True)
                time.sleep(0.3)
                yield piece
        bs.atomic_write(Path({str(dest)!r}), slow({cid!r}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"piece"
    time.sleep(0.4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not dest.exists()
    assert store.get_bytes(cid) == payload


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_stale_temp_files_are_removed_on_open_and_by_gc(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    store = Blockstore(root)
    cid = store.add_bytes(BIG)
    stale_tmp = root / "tmp" / f"{TEMP_PREFIX}dead.part"
    fresh_tmp = root / "tmp" / f"{TEMP_PREFIX}busy.part"
    shard = next(p for p in (root / "data").iterdir() if p.is_dir())
    legacy = shard / ".tmp-abc.part"  # what earlier releases left beside the blocks
    for path in (stale_tmp, fresh_tmp, legacy):
        path.write_bytes(b"partial")
    _age(stale_tmp, 3600)
    _age(legacy, 3600)
    Blockstore(root)  # opening cleans tmp/
    assert not stale_tmp.exists() and fresh_tmp.exists() and legacy.exists()
    stale_pin = root / "pins" / f"{TEMP_PREFIX}pin.part"
    stale_pin.write_bytes(b"")
    _age(stale_pin, 3600)
    result = store.gc()
    assert result.temp_files == 2 and result.removed == 0
    assert not legacy.exists() and not stale_pin.exists() and fresh_tmp.exists()
    assert store.get_bytes(cid) == BIG and store.pins() == [cid]


def test_add_writes_blocks_then_flushes_once_before_the_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed flush is a clear error and leaves no pin: the content is not claimed durable."""

    def failing_sync(fd: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    store = Blockstore(tmp_path / "blocks", syncfs=failing_sync)
    with pytest.raises(StorageWriteError, match="Input/output error"):
        store.add_bytes(BIG)
    assert store.pins() == []
    monkeypatch.setattr(store, "_syncfs", None)  # the per-file fsync fallback
    cid = store.add_bytes(BIG)
    assert store.pins() == [cid] and store.verify(cid)
    assert list((tmp_path / "blocks" / "tmp").iterdir()) == []
