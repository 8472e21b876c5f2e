"""Verified reading of a UnixFS file DAG, block by block, from any block source.

`fetch(cid)` returns a block's bytes; every block is hashed against its CID before it is
decoded or any of its bytes are yielded, and every child's size is checked against what its
parent promised, so a reader never sees a byte that is not part of the requested file.

Blocks come from peers, so a DAG may be crafted. Every walk here is iterative (a chain
thousands of blocks deep is no deeper for Python's stack), and none does unbounded work:

* `iter_dag_cids` (presence, pins, GC) and `verify_dag` visit each distinct block once, however
  many links point at it;
* `iter_file` must visit a block once per link to it (a file of repeated content repeats
  its leaves), so it charges every block it reads, at least `MIN_BLOCK_CHARGE` bytes, against
  `walk_budget(filesize)`. A Kubo DAG costs its file size plus ~0.02 % of link blocks; a DAG
  whose links fan out to the same few empty blocks runs out of budget after a few reads and
  is a `MalformedBlock`, as is a chain of single-child nodes over a few bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from r3mes.storage.errors import (
    BlockNotFound,
    CidMismatch,
    InvalidCid,
    MalformedBlock,
    SizeLimitExceeded,
)
from r3mes.storage.multiformats import RAW, Cid
from r3mes.storage.unixfs import DecodedNode, decode_file_node

BlockFetcher = Callable[[Cid], bytes]

MIN_BLOCK_CHARGE = 256
"""Bytes a block read costs at least: a link block of a few CIDs is not free to read."""
WALK_SLACK = 1 << 20
"""Block bytes a file walk may read beyond its file size and 1/16 of it (link blocks): a
3,000-deep chain of single-child nodes still reads, an exponential fan-out does not."""


def walk_budget(filesize: int) -> int:
    """Most block bytes (`MIN_BLOCK_CHARGE` each at least) reading a `filesize` file may take."""
    return filesize + filesize // 16 + WALK_SLACK


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
    yield from _walk(cid, node, fetch, source=source, spent=_charge(root))


def _check_limit(cid: Cid, size: int, max_size: int | None) -> None:
    if max_size is not None and size > max_size:
        raise SizeLimitExceeded(str(cid), size, max_size)


def _decode(cid: Cid, block: bytes) -> DecodedNode:
    try:
        return decode_file_node(block)
    except (ValueError, InvalidCid) as exc:  # InvalidCid: a link that is not a CID we read
        raise MalformedBlock(str(cid), str(exc)) from exc


def _charge(block: bytes) -> int:
    return max(len(block), MIN_BLOCK_CHARGE)


def _over_budget(root: Cid, filesize: int, spent: int) -> MalformedBlock:
    return MalformedBlock(
        str(root),
        f"reading its {filesize} file bytes takes over {spent} bytes of blocks (limit "
        f"{walk_budget(filesize)}): its links repeat or chain blocks as no file DAG does",
    )


def _walk(
    root: Cid, node: DecodedNode, fetch: BlockFetcher, *, source: str, spent: int
) -> Iterator[bytes]:
    """Depth-first, left to right, with an explicit stack of (child, promised size)."""
    budget = walk_budget(node.filesize)
    if node.data:
        yield node.data
    stack = list(zip(reversed(node.links), reversed(node.blocksizes), strict=True))
    while stack:
        cid, expected = stack.pop()
        block = fetch(cid)
        spent += _charge(block)
        if spent > budget:
            raise _over_budget(root, node.filesize, spent)
        verified_block(cid, block, source)
        if cid.codec == RAW:
            if len(block) != expected:
                raise MalformedBlock(
                    str(cid), f"raw leaf has {len(block)} bytes, parent says {expected}"
                )
            yield block
            continue
        child = _decode(cid, block)
        if child.filesize != expected:
            raise MalformedBlock(
                str(cid), f"node holds {child.filesize} bytes, parent says {expected}"
            )
        if child.data:
            yield child.data
        stack += zip(reversed(child.links), reversed(child.blocksizes), strict=True)


def iter_dag_cids(
    cid: Cid, fetch: BlockFetcher, *, source: str, exists: Callable[[Cid], bool]
) -> Iterator[Cid]:
    """Every distinct CID of the DAG under `cid`, root first, each once. Raw leaves are only
    checked with `exists` (not read); dag-pb nodes are fetched, verified and decoded."""
    seen = {cid}
    stack = [cid]
    while stack:
        current = stack.pop()
        if current.codec == RAW:
            if not exists(current):
                raise BlockNotFound(str(current), source)
            yield current
            continue
        node = _decode(current, verified_block(current, fetch(current), source))
        yield current
        for child in reversed(node.links):
            if child not in seen:
                seen.add(child)
                stack.append(child)


def verify_dag(cid: Cid, fetch: BlockFetcher, *, source: str) -> int:
    """Check the whole file DAG under `cid` as `iter_file` would read it, visiting each
    distinct block once; return the file size. Raises what `iter_file` would raise."""
    done: dict[Cid, tuple[int, int]] = {}  # cid -> (file bytes, cost of reading it)
    open_nodes: dict[Cid, tuple[DecodedNode, int]] = {}  # decoded, children pending
    stack = [cid]
    while stack:
        current = stack[-1]
        if current in done:
            stack.pop()
            continue
        if current not in open_nodes:
            block = verified_block(current, fetch(current), source)
            if current.codec == RAW:
                done[current] = (len(block), _charge(block))
                stack.pop()
                continue
            node = _decode(current, block)
            open_nodes[current] = (node, _charge(block))
            pending = [c for c in node.links if c not in done]
            if any(c in open_nodes for c in pending):
                raise MalformedBlock(str(current), "links back to one of its own parents")
            stack += reversed(pending)
            continue
        stack.pop()
        node, charge = open_nodes.pop(current)
        done[current] = (node.filesize, charge + _check_children(node, done))
    size, cost = done[cid]
    if cid.codec != RAW and cost > walk_budget(size):
        raise _over_budget(cid, size, cost)
    return size


def _check_children(node: DecodedNode, done: dict[Cid, tuple[int, int]]) -> int:
    """Check each child holds what `node` promised; return the cost of reading them all."""
    cost = 0
    for child, promised in zip(node.links, node.blocksizes, strict=True):
        size, child_cost = done[child]
        if size != promised:
            what = "raw leaf has" if child.codec == RAW else "node holds"
            raise MalformedBlock(str(child), f"{what} {size} bytes, parent says {promised}")
        cost = min(cost + child_cost, 1 << 64)  # an exponential fan-out stays a small int
    return cost
