"""Verified reading of a UnixFS file DAG, block by block, from any block source.

`fetch(cid)` returns a block's bytes; every block is hashed against its CID before it is
decoded or any of its bytes are yielded, and every child's size is checked against what its
parent promised, so a reader never sees a byte that is not part of the requested file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from r3mes.storage.errors import BlockNotFound, CidMismatch, MalformedBlock, SizeLimitExceeded
from r3mes.storage.multiformats import RAW, Cid
from r3mes.storage.unixfs import DecodedNode, decode_file_node

BlockFetcher = Callable[[Cid], bytes]


def verified_block(cid: Cid, data: bytes, source: str) -> bytes:
    """Return `data` when it hashes to `cid`, else raise CidMismatch."""
    if not cid.matches(data):
        raise CidMismatch(str(cid), source)
    return data


def iter_file(
    cid: Cid, fetch: BlockFetcher, *, source: str, max_size: int | None = None
) -> Iterator[bytes]:
    """Yield the file's bytes in order; raise SizeLimitExceeded before reading past `max_size`."""
    root = verified_block(cid, fetch(cid), source)
    if cid.codec == RAW:
        _check_limit(cid, len(root), max_size)
        yield root
        return
    node = _decode(cid, root)
    _check_limit(cid, node.filesize, max_size)
    yield from _walk(cid, root, fetch, source=source, expected=node.filesize)


def _check_limit(cid: Cid, size: int, max_size: int | None) -> None:
    if max_size is not None and size > max_size:
        raise SizeLimitExceeded(str(cid), size, max_size)


def _decode(cid: Cid, block: bytes) -> DecodedNode:
    try:
        return decode_file_node(block)
    except ValueError as exc:
        raise MalformedBlock(str(cid), str(exc)) from exc


def _walk(
    cid: Cid, block: bytes, fetch: BlockFetcher, *, source: str, expected: int
) -> Iterator[bytes]:
    if cid.codec == RAW:
        if len(block) != expected:
            raise MalformedBlock(
                str(cid), f"raw leaf has {len(block)} bytes, parent says {expected}"
            )
        yield block
        return
    node = _decode(cid, block)
    if node.filesize != expected:
        raise MalformedBlock(str(cid), f"node holds {node.filesize} bytes, parent says {expected}")
    if node.data:
        yield node.data
    for child, size in zip(node.links, node.blocksizes, strict=True):
        child_block = verified_block(child, fetch(child), source)
        yield from _walk(child, child_block, fetch, source=source, expected=size)


def iter_dag_cids(
    cid: Cid, fetch: BlockFetcher, *, source: str, exists: Callable[[Cid], bool]
) -> Iterator[Cid]:
    """Every CID of the DAG under `cid`, root first. Raw leaves are only checked with
    `exists` (not read); dag-pb nodes are fetched, verified and decoded for their links."""
    if cid.codec == RAW:
        if not exists(cid):
            raise BlockNotFound(str(cid), source)
        yield cid
        return
    node = _decode(cid, verified_block(cid, fetch(cid), source))
    yield cid
    for child in node.links:
        yield from iter_dag_cids(child, fetch, source=source, exists=exists)
