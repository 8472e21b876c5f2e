"""dag-pb / UnixFS encoding and Kubo's balanced file importer, written by hand.

Byte-for-byte what `ipfs add` produces with its defaults:
- 256 KiB fixed-size chunks, balanced layout, at most 174 links per node, sha2-256;
- `--cid-version=1` uses raw leaves (codec 0x55) and CIDv1 dag-pb internal nodes;
- plain `ipfs add` (CIDv0) wraps every leaf in a dag-pb node holding UnixFS
  `{Type: File, Data: chunk, filesize: len}`.

Encoding rules (from go-merkledag / go-codec-dagpb and go-unixfs): a PBNode is encoded with its
Links (field 2) before its Data (field 1); each PBLink always carries Hash (1), Name (2, empty
string) and Tsize (3). UnixFS Data writes Type (1), Data (2), filesize (3, always present) and
blocksizes (4, one varint field per child, unpacked) in that order. Tsize of a link is the
child's block length plus the Tsizes of the child's own links.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from r3mes.storage.multiformats import DAG_PB, RAW, Cid, cid_from_bytes, decode_varint
from r3mes.storage.multiformats import encode_varint as _varint

CHUNK_SIZE = 262144
MAX_LINKS = 174
UNIXFS_FILE = 2
UNIXFS_RAW = 0
_MAX_BLOCK = 2 * 1024 * 1024


@dataclass(frozen=True)
class DagParams:
    """How a file is cut into blocks; the defaults are Kubo's `ipfs add` defaults."""

    cid_version: int = 1
    """1: raw leaves + CIDv1 (R3MES default); 0: dag-pb leaves + CIDv0."""
    chunk_size: int = CHUNK_SIZE
    """Bytes per leaf (fixed-size chunker)."""
    max_links: int = MAX_LINKS
    """Most children an internal node may have."""

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise ValueError("cid_version must be 0 or 1")
        if not 1 <= self.chunk_size <= 1024 * 1024:
            raise ValueError("chunk_size must be in 1..1048576")
        if self.max_links < 2:
            raise ValueError("max_links must be at least 2")


@dataclass(frozen=True)
class Link:
    """A dag-pb link: child CID, cumulative size (Tsize) and the file bytes below it."""

    cid: Cid
    tsize: int
    file_size: int


@dataclass(frozen=True)
class Block:
    """One encoded block and its CID."""

    cid: Cid
    data: bytes


@dataclass(frozen=True)
class DecodedNode:
    """A decoded dag-pb UnixFS file node."""

    links: tuple[Cid, ...]
    unixfs_type: int
    data: bytes
    filesize: int
    blocksizes: tuple[int, ...]


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def encode_unixfs(
    *, kind: int, data: bytes | None, filesize: int, blocksizes: Iterable[int] = ()
) -> bytes:
    """UnixFS `Data` message: Type, Data (if any), filesize, blocksizes."""
    out = bytearray(_field_varint(1, kind))
    if data:
        out += _field_bytes(2, data)
    out += _field_varint(3, filesize)
    for size in blocksizes:
        out += _field_varint(4, size)
    return bytes(out)


def encode_pbnode(*, links: Iterable[Link], data: bytes) -> bytes:
    """PBNode: every link (field 2) first, then Data (field 1)."""
    out = bytearray()
    for link in links:
        body = _field_bytes(1, link.cid.to_bytes()) + _field_bytes(2, b"")
        body += _field_varint(3, link.tsize)
        out += _field_bytes(2, body)
    out += _field_bytes(1, data)
    return bytes(out)


def _iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    pos = 0
    while pos < len(buf):
        key, pos = decode_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = decode_varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = decode_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            yield number, wire, buf[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")


def decode_file_node(block: bytes) -> DecodedNode:
    """Decode a dag-pb block holding a UnixFS File/Raw node; ValueError when malformed,
    `InvalidCid` when a link holds a CID this package does not read."""
    if len(block) > _MAX_BLOCK:
        raise ValueError("block too large")
    links: list[Cid] = []
    pb_data = b""
    for number, wire, value in _iter_fields(block):
        if number == 2 and wire == 2 and isinstance(value, bytes):
            for sub_no, sub_wire, sub_val in _iter_fields(value):
                if sub_no == 1 and sub_wire == 2 and isinstance(sub_val, bytes):
                    links.append(cid_from_bytes(sub_val))
        elif number == 1 and wire == 2 and isinstance(value, bytes):
            pb_data = value
    kind, data, filesize, blocksizes = -1, b"", 0, []
    for number, _wire, value in _iter_fields(pb_data):
        if number == 1 and isinstance(value, int):
            kind = value
        elif number == 2 and isinstance(value, bytes):
            data = value
        elif number == 3 and isinstance(value, int):
            filesize = value
        elif number == 4 and isinstance(value, int):
            blocksizes.append(value)
    if kind not in (UNIXFS_FILE, UNIXFS_RAW):
        raise ValueError(f"not a UnixFS file node (type {kind})")
    if len(blocksizes) != len(links):
        raise ValueError("blocksizes and links differ in number")
    if filesize != len(data) + sum(blocksizes):
        raise ValueError("filesize does not equal data plus blocksizes")
    return DecodedNode(tuple(links), kind, data, filesize, tuple(blocksizes))


def _leaf(chunk: bytes, params: DagParams) -> tuple[Block, Link]:
    if params.cid_version == 1:
        cid = Cid.of_block(chunk, version=1, codec=RAW)
        return Block(cid, chunk), Link(cid, len(chunk), len(chunk))
    encoded = encode_pbnode(
        links=(), data=encode_unixfs(kind=UNIXFS_FILE, data=chunk, filesize=len(chunk))
    )
    cid = Cid.of_block(encoded, version=0, codec=DAG_PB)
    return Block(cid, encoded), Link(cid, len(encoded), len(chunk))


def _internal(children: list[Link], params: DagParams) -> tuple[Block, Link]:
    sizes = [c.file_size for c in children]
    unixfs = encode_unixfs(kind=UNIXFS_FILE, data=None, filesize=sum(sizes), blocksizes=sizes)
    encoded = encode_pbnode(links=children, data=unixfs)
    cid = Cid.of_block(encoded, version=params.cid_version, codec=DAG_PB)
    tsize = len(encoded) + sum(c.tsize for c in children)
    return Block(cid, encoded), Link(cid, tsize, sum(sizes))


@dataclass
class DagBuilder:
    """Streaming balanced-DAG builder: feed chunks, collect blocks, `finish()` for the root.

    Level h holds links to complete subtrees of height h; a level that fills up to
    `max_links` becomes one node one level up. This yields exactly the shape of Kubo's
    balanced layout (leaves filled left to right, every leaf at the same depth).
    """

    params: DagParams = field(default_factory=DagParams)
    levels: list[list[Link]] = field(default_factory=list)
    file_size: int = 0

    def add_chunk(self, chunk: bytes) -> list[Block]:
        """Add one leaf (a full chunk, or the last partial one); return new blocks."""
        if not chunk:
            raise ValueError("chunks must be non-empty; empty files need no chunk")
        block, link = _leaf(chunk, self.params)
        self.file_size += len(chunk)
        out = [block]
        self._push(0, link, out)
        return out

    def _push(self, height: int, link: Link, out: list[Block]) -> None:
        while len(self.levels) <= height:
            self.levels.append([])
        self.levels[height].append(link)
        if len(self.levels[height]) == self.params.max_links:
            block, parent = _internal(self.levels[height], self.params)
            self.levels[height] = []
            out.append(block)
            self._push(height + 1, parent, out)

    def finish(self) -> tuple[Cid, list[Block]]:
        """Close every open level; return the root CID and the blocks made doing so."""
        out: list[Block] = []
        if self.file_size == 0:
            block, _ = _leaf_empty(self.params)
            return block.cid, [block]
        top = max(h for h, links in enumerate(self.levels) if links)
        height = 0
        while True:
            links = self.levels[height] if height < len(self.levels) else []
            if height >= top and len(links) == 1 and not any(self.levels[height + 1 :]):
                return links[0].cid, out
            if links:
                block, parent = _internal(links, self.params)
                self.levels[height] = []
                out.append(block)
                self._push_no_split(height + 1, parent)
            height += 1

    def _push_no_split(self, height: int, link: Link) -> None:
        while len(self.levels) <= height:
            self.levels.append([])
        self.levels[height].append(link)


def _leaf_empty(params: DagParams) -> tuple[Block, Link]:
    if params.cid_version == 1:
        cid = Cid.of_block(b"", version=1, codec=RAW)
        return Block(cid, b""), Link(cid, 0, 0)
    encoded = encode_pbnode(links=(), data=encode_unixfs(kind=UNIXFS_FILE, data=None, filesize=0))
    cid = Cid.of_block(encoded, version=0, codec=DAG_PB)
    return Block(cid, encoded), Link(cid, len(encoded), 0)


class Rechunker:
    """Re-cut arbitrary byte pieces into fixed-size chunks, copying each byte once."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self._buf = bytearray()

    def feed(self, piece: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Chunks completed by `piece` (full `chunk_size` ones only)."""
        view = memoryview(piece).cast("B")
        size = self.chunk_size
        start = 0
        if self._buf:
            start = min(size - len(self._buf), len(view))
            self._buf += view[:start]
            if len(self._buf) < size:
                return
            yield bytes(self._buf)
            self._buf = bytearray()
        while len(view) - start >= size:
            yield bytes(view[start : start + size])
            start += size
        self._buf += view[start:]

    def flush(self) -> Iterator[bytes]:
        """The last, shorter chunk (if any bytes are left)."""
        if self._buf:
            yield bytes(self._buf)
            self._buf = bytearray()


def iter_chunks(stream: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    """Re-cut arbitrary byte pieces into fixed-size chunks (the last may be shorter)."""
    rechunker = Rechunker(chunk_size)
    for piece in stream:
        yield from rechunker.feed(piece)
    yield from rechunker.flush()


def build_dag(pieces: Iterable[bytes], params: DagParams | None = None) -> Iterator[Block]:
    """All blocks of the file made of `pieces`, root last."""
    builder = DagBuilder(params=params or DagParams())
    for chunk in iter_chunks(pieces, builder.params.chunk_size):
        yield from builder.add_chunk(chunk)
    _, tail = builder.finish()
    yield from tail


def compute_cid(data: bytes, *, cid_version: int = 1) -> str:
    """The CID `ipfs add [--cid-version=1]` prints for these bytes."""
    return str(root_of(build_dag([data], DagParams(cid_version=cid_version))))


def root_of(blocks: Iterable[Block]) -> Cid:
    """The CID of the last block of a `build_dag` stream."""
    last: Block | None = None
    for block in blocks:
        last = block
    if last is None:
        raise ValueError("no blocks")
    return last.cid
