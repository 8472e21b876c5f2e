"""Crafted DAGs (issue 19 item 10): every walk is iterative and bounded.

A 3,000-deep chain used to raise RecursionError in `get_bytes`, `has` and `pin`; a diamond
of 13 blocks x 174 links to the same child kept `get_bytes(max_size=1024)`, `has` and
`verify` busy for more than 20 s (174**12 paths).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from r3mes.storage.blockstore import Blockstore
from r3mes.storage.errors import BlockNotFound, MalformedBlock, StorageError
from r3mes.storage.multiformats import DAG_PB, RAW, Cid
from r3mes.storage.reader import iter_dag_cids, iter_file, verify_dag, walk_budget
from r3mes.storage.unixfs import (
    MAX_LINKS,
    UNIXFS_FILE,
    DagParams,
    Link,
    build_dag,
    encode_pbnode,
    encode_unixfs,
)

Blocks = dict[Cid, bytes]


def _node(children: list[tuple[Cid, int]], blocks: Blocks, data: bytes = b"") -> Cid:
    """A CIDv1 dag-pb file node over `children` (cid, file bytes below it)."""
    sizes = [size for _, size in children]
    unixfs = encode_unixfs(
        kind=UNIXFS_FILE, data=data, filesize=len(data) + sum(sizes), blocksizes=sizes
    )
    links = [Link(cid, 1, size) for cid, size in children]
    encoded = encode_pbnode(links=links, data=unixfs)
    cid = Cid.of_block(encoded, version=1, codec=DAG_PB)
    blocks[cid] = encoded
    return cid


def _leaf(data: bytes, blocks: Blocks) -> Cid:
    cid = Cid.of_block(data, version=1, codec=RAW)
    blocks[cid] = data
    return cid


def chain(depth: int) -> tuple[Cid, Blocks]:
    """`depth` single-child nodes over a 1-byte leaf."""
    blocks: Blocks = {}
    cid = _leaf(b"x", blocks)
    for _ in range(depth):
        cid = _node([(cid, 1)], blocks)
    return cid, blocks


def diamond(levels: int = 13, fan: int = MAX_LINKS) -> tuple[Cid, Blocks]:
    """`levels` nodes, each linking `fan` times to the one below; an empty leaf at the end."""
    blocks: Blocks = {}
    cid = _leaf(b"", blocks)
    for _ in range(levels):
        cid = _node([(cid, 0)] * fan, blocks)
    return cid, blocks


def _stored(tmp_path: Path, blocks: Blocks) -> Blockstore:
    store = Blockstore(tmp_path / "blocks")
    for cid, data in blocks.items():
        store.put_block(str(cid), data)
    return store


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    start = time.process_time()
    try:
        result: object = call()
    except StorageError as exc:
        result = exc
    return result, time.process_time() - start


def test_a_3000_deep_chain_reads_has_pins_verifies_and_collects(tmp_path: Path) -> None:
    root, blocks = chain(3000)
    store = _stored(tmp_path, blocks)
    assert store.get_bytes(str(root), max_size=1024) == b"x"
    assert store.has(str(root)) and store.verify(str(root))
    store.pin(str(root))
    assert store.gc().removed == 0 and store.get_bytes(str(root)) == b"x"


def test_a_diamond_dag_is_refused_quickly_and_visited_once(tmp_path: Path) -> None:
    root, blocks = diamond()
    store = _stored(tmp_path, blocks)
    read, seconds = _timed(lambda: store.get_bytes(str(root), max_size=1024))
    assert isinstance(read, MalformedBlock) and "repeat or chain" in str(read)
    assert seconds < 2.0
    has, seconds = _timed(lambda: store.has(str(root)))
    assert has is True and seconds < 2.0  # every block is present
    ok, seconds = _timed(lambda: store.verify(str(root)))
    assert ok is False and seconds < 2.0  # reading it would cost 174**12 block reads
    pinned, seconds = _timed(lambda: store.pin(str(root)))
    assert pinned is None and seconds < 2.0


def test_each_distinct_block_is_fetched_once_by_has_and_verify() -> None:
    root, blocks = diamond(levels=4, fan=3)
    fetched: list[Cid] = []

    def fetch(cid: Cid) -> bytes:
        fetched.append(cid)
        return blocks[cid]

    cids = list(iter_dag_cids(root, fetch, source="t", exists=blocks.__contains__))
    assert len(cids) == len(set(cids)) == 5 and cids[0] == root
    assert len(fetched) == 4  # the raw leaf is only checked for presence
    fetched.clear()
    assert verify_dag(root, fetch, source="t") == 0
    assert sorted(map(str, fetched)) == sorted(map(str, blocks))


def test_a_file_of_repeated_content_still_reads_back() -> None:
    """Kubo dedups equal chunks: one leaf linked many times is a legitimate file."""
    data = b"\0" * (20 * 4096)
    built = list(build_dag([data], DagParams(cid_version=1, chunk_size=4096, max_links=4)))
    blocks = {b.cid: b.data for b in built}
    root = built[-1].cid
    assert len(built) == 28 and len(blocks) == 5  # the same leaf and nodes, linked again
    assert b"".join(iter_file(root, blocks.__getitem__, source="t")) == data
    assert verify_dag(root, blocks.__getitem__, source="t") == len(data)


def test_iter_file_and_verify_dag_agree_on_the_budget() -> None:
    """A chain just under the walk budget reads and verifies; one just over does neither."""
    for depth, ok in ((3000, True), (walk_budget(1) // 256 + 10, False)):
        root, blocks = chain(depth)
        fetch = blocks.__getitem__

        def read(root: Cid = root, fetch: Callable[[Cid], bytes] = fetch) -> Iterator[bytes]:
            return iter_file(root, fetch, source="t")

        if ok:
            assert b"".join(read()) == b"x" and verify_dag(root, fetch, source="t") == 1
        else:
            with pytest.raises(MalformedBlock, match="repeat or chain"):
                b"".join(read())
            with pytest.raises(MalformedBlock, match="repeat or chain"):
                verify_dag(root, fetch, source="t")


def test_a_child_of_the_wrong_size_or_missing_is_caught_by_both_readers() -> None:
    blocks: Blocks = {}
    leaf = _leaf(b"abc", blocks)
    root = _node([(leaf, 4)], blocks)  # promises 4 bytes, the leaf has 3
    with pytest.raises(MalformedBlock, match="parent says 4"):
        b"".join(iter_file(root, blocks.__getitem__, source="t"))
    with pytest.raises(MalformedBlock, match="parent says 4"):
        verify_dag(root, blocks.__getitem__, source="t")
    del blocks[leaf]

    def fetch(cid: Cid) -> bytes:
        if cid not in blocks:
            raise BlockNotFound(str(cid), "t")
        return blocks[cid]

    with pytest.raises(BlockNotFound):
        verify_dag(root, fetch, source="t")


def test_the_module_holds_no_state_from_import() -> None:
    """Issue 18: libc's syncfs is looked up per blockstore, not when the module is imported."""
    from _ctypes import CFuncPtr  # the base of every foreign function (ctypes._CFuncPtr)

    import r3mes.storage.blockstore as module

    assert not [name for name, value in vars(module).items() if isinstance(value, CFuncPtr)]


def test_a_link_that_is_no_cid_makes_the_block_malformed() -> None:
    blocks: Blocks = {}
    leaf = _leaf(b"abc", blocks)
    good = blocks[_node([(leaf, 3)], blocks)]
    bad = good.replace(b"\x01\x55\x12\x20", b"\x01\x56\x12\x20", 1)  # codec 0x56: unknown
    root = Cid.of_block(bad, version=1, codec=DAG_PB)
    blocks[root] = bad
    with pytest.raises(MalformedBlock, match="unsupported codec"):
        b"".join(iter_file(root, blocks.__getitem__, source="t"))
    with pytest.raises(MalformedBlock, match="unsupported codec"):
        verify_dag(root, blocks.__getitem__, source="t")
