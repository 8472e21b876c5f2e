"""A local, IPFS-compatible blockstore on disk (the default content store).

Layout under `root` (normally `$R3MES_HOME/blocks`):
    data/<last two CID chars>/<cid>   one file per block, renamed into place from tmp/
    pins/<cid>                        one empty marker per recursive pin
    tmp/                              temp files of writes in progress
    lock                              flock held while adding or collecting garbage

Every block read is hashed against its CID; a corrupt block is reported, never returned.

Durability: an add writes and renames all its blocks, then flushes them to disk at once
(`syncfs`, or one fsync per block where that is missing) and only then writes the pin. A crash
before the flush can leave a block file torn; it fails its CID check on read (never returned)
and the next add or fetch of that content rewrites it. Temp files that a killed process left
in tmp/ are deleted when a blockstore is opened or collected, once they are stale.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from r3mes.storage.errors import (
    BlockNotFound,
    MalformedBlock,
    StorageError,
    StorageWriteError,
)
from r3mes.storage.multiformats import DAG_PB, Cid, parse_cid
from r3mes.storage.reader import iter_dag_cids, iter_file, verified_block, verify_dag
from r3mes.storage.tempfiles import make_temp_file, remove_stale, unlink_quietly
from r3mes.storage.unixfs import Block, DagBuilder, DagParams, Rechunker, decode_file_node

log = logging.getLogger(__name__)

SOURCE = "local blockstore"
_READ_PIECE = 1024 * 1024
DEFAULT_MAX_SIZE = 8 * 1024**3


@dataclass(frozen=True)
class GcResult:
    """What a garbage collection did."""

    removed: int
    """Blocks deleted (not reachable from any pin)."""
    freed_bytes: int
    """Bytes those blocks occupied."""
    kept: int
    """Blocks still stored."""
    temp_files: int = 0
    """Stale temp files of interrupted writes deleted."""


class NotPinned(StorageError):
    """`unpin` was asked for a CID that has no pin."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        super().__init__(f"{cid} is not pinned; `r3mes storage pin --list` shows the pins")


def atomic_write(path: Path, chunks: Iterable[bytes], *, tmp_dir: Path | None = None) -> int:
    """Write `chunks` to `path` via temp file + fsync + rename; return bytes written.

    The temp file lives in `tmp_dir` (same filesystem; default: beside `path`). On any
    failure it is removed and `path` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = make_temp_file(tmp_dir or path.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                written += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        unlink_quietly(tmp_name)
        raise
    return written


SyncFs = Callable[[int], int]
"""`syncfs(fd)`: flush the filesystem holding `fd`; 0 on success, -1 with errno set."""


def load_syncfs() -> SyncFs | None:
    """libc `syncfs(fd)` (Linux): flush one filesystem with one call; None where missing.

    Looked up in the symbols already loaded into this process (no library search, no
    subprocess), so a `Blockstore` can afford it when it is created."""
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return cast(SyncFs, func)


def _counted(stream: Iterator[bytes], on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    for piece in stream:
        if on_bytes is not None:
            on_bytes(len(piece))
        yield piece


class Blockstore:
    """Content-addressed blocks on local disk with recursive pins and GC."""

    def __init__(self, root: Path, *, syncfs: SyncFs | None = None) -> None:
        """`syncfs` flushes an add; None means libc's (`load_syncfs`). Where neither is
        available an add falls back to one fsync per block and per folder."""
        self.root = Path(root)
        self._syncfs = syncfs if syncfs is not None else load_syncfs()
        self._data = self.root / "data"
        self._pins = self.root / "pins"
        self._tmp = self.root / "tmp"
        remove_stale(self._tmp)  # left by a killed writer; cheap: one small folder

    # ---- writing -------------------------------------------------------------------

    def add_bytes(self, data: bytes, *, cid_version: int = 1, pin: bool = True) -> str:
        """Store `data` as a UnixFS file; return its CID (identical to `ipfs add`)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("add_bytes expects bytes")
        return self.add_stream([data], cid_version=cid_version, pin=pin)

    def add_file(self, path: Path, *, cid_version: int = 1, pin: bool = True) -> str:
        """Store the file at `path`, streaming it in 1 MiB pieces; return its CID."""
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"{path} is not a regular file; pass the path of a file to add")

        def pieces() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while piece := handle.read(_READ_PIECE):
                    yield piece

        return self.add_stream(pieces(), cid_version=cid_version, pin=pin)

    def add_stream(self, pieces: Iterable[bytes], *, cid_version: int = 1, pin: bool = True) -> str:
        """Store the concatenation of `pieces`; return its root CID."""
        params = DagParams(cid_version=cid_version)
        builder = DagBuilder(params=params)
        chunks = Rechunker(params.chunk_size)
        written: list[Path] = []
        with self._locked():
            for piece in pieces:
                for chunk in chunks.feed(piece):
                    written += self._put_blocks(builder.add_chunk(chunk))
            for chunk in chunks.flush():
                written += self._put_blocks(builder.add_chunk(chunk))
            root, tail = builder.finish()
            written += self._put_blocks(tail)
            self._flush(written)
            if pin:
                self._write_pin(root)
        log.debug("added %s (%d bytes, pin=%s)", root, builder.file_size, pin)
        return str(root)

    def put_block(self, cid: str, data: bytes) -> None:
        """Store one block received from elsewhere, after checking it against `cid`."""
        parsed = parse_cid(cid)
        verified_block(parsed, data, "caller")
        with self._locked():
            self._flush(self._put_blocks([Block(parsed, data)]))

    def _put_blocks(self, blocks: Iterable[Block]) -> list[Path]:
        """Write blocks not yet stored intact (rename only, no fsync: see `_flush`)."""
        written = []
        for block in blocks:
            path = self._block_path(block.cid)
            if path.is_file() and self._intact(block.cid, path):
                continue  # re-adding repairs a corrupt copy, skips a good one
            try:
                self._write_block(path, block.data)
            except OSError as exc:
                raise StorageWriteError(str(path), exc.strerror or str(exc)) from exc
            written.append(path)
        return written

    def _write_block(self, path: Path, data: bytes) -> None:
        try:
            fd, tmp = make_temp_file(self._tmp)
        except FileNotFoundError:
            self._tmp.mkdir(parents=True, exist_ok=True)
            fd, tmp = make_temp_file(self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:  # first block of this shard
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
        except BaseException:
            unlink_quietly(tmp)
            raise

    def _flush(self, paths: list[Path]) -> None:
        """Make freshly written blocks durable: one `syncfs` for the whole batch, else one
        fsync per block and per folder."""
        if not paths:
            return
        try:
            if self._syncfs is not None:
                fd = os.open(self._data, os.O_RDONLY)
                try:
                    if self._syncfs(fd) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                finally:
                    os.close(fd)
                return
            for target in [*paths, *{p.parent for p in paths}]:
                fd = os.open(target, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StorageWriteError(str(self._data), exc.strerror or str(exc)) from exc

    # ---- reading -------------------------------------------------------------------

    def get_block(self, cid: Cid) -> bytes:
        """One block's bytes, verified against its CID."""
        return verified_block(cid, self._read_block(cid), SOURCE)

    def _read_block(self, cid: Cid) -> bytes:
        """One block's bytes as stored, unchecked: only for readers that verify every block
        themselves (`iter_file`, `iter_dag_cids`), so each block is hashed once."""
        try:
            return self._block_path(cid).read_bytes()
        except FileNotFoundError:
            raise BlockNotFound(str(cid), SOURCE) from None

    def has_block(self, cid: Cid) -> bool:
        return self._block_path(cid).is_file()

    def get_bytes(self, cid: str, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
        """The whole file named by `cid`; SizeLimitExceeded if it is over `max_size`."""
        return b"".join(self.open_stream(cid, max_size=max_size))

    def open_stream(self, cid: str, *, max_size: int | None = None) -> Iterator[bytes]:
        """The file's bytes in order, each block verified before it is yielded."""
        return iter_file(parse_cid(cid), self._read_block, source=SOURCE, max_size=max_size)

    def cat_to_file(
        self,
        cid: str,
        dest: Path,
        *,
        max_size: int | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Write the file to `dest` atomically (no partial file is ever visible);
        `on_bytes(n)` is called as verified bytes are written (progress)."""
        stream = _counted(self.open_stream(cid, max_size=max_size), on_bytes)
        try:
            return atomic_write(Path(dest), stream)
        except OSError as exc:
            raise StorageWriteError(str(dest), exc.strerror or str(exc)) from exc

    def has(self, cid: str) -> bool:
        """True when every block of the DAG under `cid` is stored: presence only, as Kubo's
        pins and GC see a DAG. Leaves are not re-hashed and the file is not read, so a DAG
        that reading refuses (a crafted diamond whose links repeat one block over the walk
        budget) is still present; `verify` (or `get_bytes`) answers whether it reads back."""
        try:
            self._dag_cids(parse_cid(cid))
        except StorageError:
            return False
        return True

    def verify(self, cid: str) -> bool:
        """True when the whole DAG under `cid` is present, every block hashes correctly and
        the file reads back (each distinct block is read once, however often it is linked)."""
        try:
            verify_dag(parse_cid(cid), self._read_block, source=SOURCE)
        except StorageError:
            return False
        return True

    def size(self, cid: str) -> int:
        """File size in bytes of the content under `cid` (reads only the root block)."""
        parsed = parse_cid(cid)
        root = self.get_block(parsed)
        if parsed.codec != DAG_PB:
            return len(root)
        try:
            return decode_file_node(root).filesize
        except ValueError as exc:
            raise MalformedBlock(str(parsed), str(exc)) from exc

    # ---- pins and GC ---------------------------------------------------------------

    def pin(self, cid: str) -> None:
        """Pin `cid` recursively; its whole DAG must be present."""
        parsed = parse_cid(cid)
        with self._locked():
            self._dag_cids(parsed)
            self._write_pin(parsed)

    def unpin(self, cid: str) -> None:
        """Remove the pin on `cid` (its blocks go at the next `gc`)."""
        parsed = parse_cid(cid)
        marker = self._pins / str(parsed)
        try:
            marker.unlink()
        except FileNotFoundError:
            raise NotPinned(str(parsed)) from None

    def is_pinned(self, cid: str) -> bool:
        """Whether `cid` itself carries a pin."""
        return (self._pins / str(parse_cid(cid))).exists()

    def pins(self) -> list[str]:
        """All pinned root CIDs, sorted."""
        if not self._pins.is_dir():
            return []
        return sorted(p.name for p in self._pins.iterdir() if not p.name.startswith("."))

    def gc(self) -> GcResult:
        """Delete every block not reachable from a pin."""
        with self._locked():
            keep: set[str] = set()
            for pinned in self.pins():
                keep.update(str(c) for c in self._dag_cids(parse_cid(pinned)))
            removed = freed = kept = 0
            for path in self._iter_block_files():
                if path.name in keep:
                    kept += 1
                    continue
                freed += path.stat().st_size
                path.unlink()
                removed += 1
            temps = self._remove_stale_temps()
        log.info("gc removed %d blocks (%d bytes), kept %d", removed, freed, kept)
        return GcResult(removed=removed, freed_bytes=freed, kept=kept, temp_files=temps)

    def _remove_stale_temps(self) -> int:
        """Stale temp files in tmp/, pins/ and (from older releases) the shard folders."""
        folders = [self._tmp, self._pins]
        if self._data.is_dir():
            folders += [p for p in self._data.iterdir() if p.is_dir()]
        return sum(remove_stale(folder) for folder in folders)

    # ---- internals -----------------------------------------------------------------

    def _dag_cids(self, cid: Cid) -> list[Cid]:
        return list(iter_dag_cids(cid, self._read_block, source=SOURCE, exists=self.has_block))

    @staticmethod
    def _intact(cid: Cid, path: Path) -> bool:
        try:
            return cid.matches(path.read_bytes())
        except OSError:
            return False

    def _write_pin(self, cid: Cid) -> None:
        path = self._pins / str(cid)
        if path.exists():
            return
        try:
            atomic_write(path, [b""], tmp_dir=self._tmp)
        except OSError as exc:
            raise StorageWriteError(str(path), exc.strerror or str(exc)) from exc

    def _block_path(self, cid: Cid) -> Path:
        name = str(cid)
        return self._data / name[-2:] / name

    def _iter_block_files(self) -> Iterator[Path]:
        if not self._data.is_dir():
            return
        for shard in sorted(self._data.iterdir()):
            if shard.is_dir():
                yield from (p for p in sorted(shard.iterdir()) if not p.name.startswith("."))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = (self.root / "lock").open("a+b")
        except OSError as exc:
            raise StorageWriteError(str(self.root), exc.strerror or str(exc)) from exc
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
