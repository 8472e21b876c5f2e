"""UnixFS directories, byte for byte as `ipfs add -r` builds them (basic, unsharded).

A directory is a dag-pb node whose links are its entries sorted by name (bytewise), each
link carrying the child's CID, its name and its Tsize (the child's block plus everything
below it), and whose Data is UnixFS `{Type: Directory}`. Files inside are imported with the
same `DagParams` as single files (raw leaves with CIDv1). Kubo skips hidden entries (names
starting with ".") unless `--hidden` is given, and so does this module.

Kubo switches a directory to a HAMT shard once its links would pass 256 KiB
(`Import.UnixFSHAMTDirectorySizeThreshold`); such directories are refused here with a clear
error rather than given a CID Kubo would not agree with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from r3mes.storage.errors import StorageError
from r3mes.storage.multiformats import DAG_PB, Cid
from r3mes.storage.unixfs import (
    Block,
    DagBuilder,
    DagParams,
    _field_bytes,
    _field_varint,
    iter_chunks,
)

UNIXFS_DIRECTORY = 1
HAMT_THRESHOLD_BYTES = 256 * 1024
READ_PIECE = 1 << 20


class DirectoryTooLarge(StorageError):
    """The directory would be HAMT-sharded by Kubo; R3MES does not build shards."""


@dataclass(frozen=True)
class Entry:
    """One named link of a directory node."""

    name: str
    cid: Cid
    tsize: int


def encode_directory(entries: list[Entry]) -> bytes:
    """The dag-pb block of a directory holding `entries` (sorted by name here)."""
    out = bytearray()
    for entry in sorted(entries, key=lambda e: e.name.encode()):
        body = _field_bytes(1, entry.cid.to_bytes()) + _field_bytes(2, entry.name.encode())
        body += _field_varint(3, entry.tsize)
        out += _field_bytes(2, body)
    out += _field_bytes(1, _field_varint(1, UNIXFS_DIRECTORY))
    return bytes(out)


def _file_blocks(path: Path, params: DagParams) -> tuple[list[Block], Entry]:
    builder = DagBuilder(params=params)
    blocks: list[Block] = []
    with path.open("rb") as handle:
        pieces: Iterator[bytes] = iter(lambda: handle.read(READ_PIECE), b"")
        for chunk in iter_chunks(pieces, params.chunk_size):
            made = builder.add_chunk(chunk)
            blocks.extend(made)
    root, tail = builder.finish()
    blocks.extend(tail)
    tsize = sum(len(block.data) for block in blocks)
    return blocks, Entry(name=path.name, cid=root, tsize=tsize)


def build_directory(path: Path, params: DagParams | None = None) -> tuple[Cid, list[Block]]:
    """Every block of the directory tree at `path` (root last) and the root's CID.

    Walks iteratively (deep trees cannot exhaust the stack); symlinks are refused, hidden
    entries skipped, as `ipfs add -r` does by default.
    """
    params = params or DagParams()
    if not path.is_dir():
        raise StorageError(f"{path} is not a directory")
    blocks: list[Block] = []
    results: dict[Path, Entry] = {}
    stack: list[tuple[Path, bool]] = [(path, False)]
    while stack:
        current, expanded = stack.pop()
        if current.is_symlink():
            raise StorageError(f"{current} is a symbolic link; R3MES adds files and folders only")
        if current.is_file():
            file_blocks, entry = _file_blocks(current, params)
            blocks.extend(file_blocks)
            results[current] = entry
            continue
        children = sorted(c for c in current.iterdir() if not c.name.startswith("."))
        if not expanded:
            stack.append((current, True))
            stack.extend((child, False) for child in children)
            continue
        entries = [results.pop(child) for child in children]
        estimate = sum(len(e.name.encode()) + len(e.cid.to_bytes()) for e in entries)
        if estimate > HAMT_THRESHOLD_BYTES:
            raise DirectoryTooLarge(
                f"{current} has too many entries for a basic UnixFS directory "
                f"(~{estimate} bytes of links; Kubo shards above {HAMT_THRESHOLD_BYTES})"
            )
        encoded = encode_directory(entries)
        cid = Cid.of_block(encoded, version=params.cid_version, codec=DAG_PB)
        blocks.append(Block(cid, encoded))
        tsize = len(encoded) + sum(e.tsize for e in entries)
        results[current] = Entry(name=current.name, cid=cid, tsize=tsize)
    return results[path].cid, blocks


def directory_cid(path: Path, *, cid_version: int = 1) -> str:
    """The CID `ipfs add -r [--cid-version=1] path` prints for the folder itself."""
    cid, _ = build_directory(path, DagParams(cid_version=cid_version))
    return str(cid)
