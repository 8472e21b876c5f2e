"""Fuzz storage's decoders: CID strings and bytes, dag-pb / UnixFS blocks, and DAG walks over
crafted block sets (fan-outs to shared children, chains, wrong sizes, missing blocks)."""

from __future__ import annotations

from hypothesis import strategies as st

from fuzz.harness import fuzz
from fuzz.mutations import mutated
from r3mes.storage.errors import BlockNotFound, StorageError
from r3mes.storage.multiformats import DAG_PB, RAW, Cid, cid_from_bytes, parse_cid
from r3mes.storage.reader import iter_dag_cids, iter_file, verify_dag
from r3mes.storage.unixfs import (
    UNIXFS_FILE,
    DagParams,
    Link,
    build_dag,
    decode_file_node,
    encode_pbnode,
    encode_unixfs,
)

SMALL = [
    list(build_dag([bytes(range(256)) * 9], DagParams(cid_version=v, chunk_size=256, max_links=3)))
    for v in (0, 1)
]
BLOCKS = [b.data for dag in SMALL for b in dag]
CIDS = [b.cid for dag in SMALL for b in dag]


def test_parse_cid() -> None:
    texts = mutated([str(c).encode() for c in CIDS]).map(lambda b: b.decode("latin-1"))
    fuzz("parse_cid", st.one_of(texts, st.text(max_size=80)), parse_cid, (StorageError,))


def test_cid_from_bytes() -> None:
    fuzz("cid_from_bytes", mutated([c.to_bytes() for c in CIDS]), cid_from_bytes, (StorageError,))


def test_decode_file_node() -> None:
    pb_blocks = [b for b, c in zip(BLOCKS, CIDS, strict=True) if c.codec == DAG_PB]
    fuzz("decode_file_node", mutated(pb_blocks), decode_file_node, (ValueError, StorageError))


@st.composite
def crafted_dags(draw: st.DrawFn) -> tuple[Cid, dict[Cid, bytes], int | None]:
    """A block set built bottom-up: each node links (often repeatedly) to earlier ones, with
    promised sizes mostly right; some blocks are then dropped."""
    blocks: dict[Cid, bytes] = {}
    made: list[tuple[Cid, int]] = []  # (cid, file bytes it holds)
    for _ in range(draw(st.integers(1, 4))):
        data = draw(st.binary(max_size=8))
        cid = Cid.of_block(data, version=1, codec=RAW)
        blocks[cid] = data
        made.append((cid, len(data)))
    for _ in range(draw(st.integers(1, 8))):
        picks = draw(st.lists(st.sampled_from(made), min_size=1, max_size=6))
        skew = st.sampled_from([0] * 12 + [1, -1])  # a promised size, mostly right
        promised = [(c, max(s + draw(skew), 0)) for c, s in picks]
        fan = draw(st.sampled_from([1, 1, 2, 50, 174]))  # links repeated to shared nodes
        children = promised * fan
        sizes = [s for _, s in children]
        data = draw(st.binary(max_size=4))
        unixfs = encode_unixfs(
            kind=UNIXFS_FILE, data=data, filesize=len(data) + sum(sizes), blocksizes=sizes
        )
        links = [Link(c, 1, s) for c, s in children]
        encoded = encode_pbnode(links=links, data=unixfs)
        cid = Cid.of_block(encoded, version=draw(st.sampled_from([0, 1])), codec=DAG_PB)
        blocks[cid] = encoded
        made.append((cid, len(data) + sum(sizes)))
    for gone in draw(st.lists(st.sampled_from(list(blocks)), max_size=2)):
        blocks.pop(gone, None)
    max_size = draw(st.one_of(st.none(), st.integers(0, 4096)))
    return made[-1][0], blocks, max_size


def _walk(case: tuple[Cid, dict[Cid, bytes], int | None]) -> object:
    root, blocks, max_size = case

    def fetch(cid: Cid) -> bytes:
        if cid not in blocks:
            raise BlockNotFound(str(cid), "fuzz")
        return blocks[cid]

    results: list[object] = []
    for walk in (
        lambda: b"".join(iter_file(root, fetch, source="fuzz", max_size=max_size)),
        lambda: list(iter_dag_cids(root, fetch, source="fuzz", exists=blocks.__contains__)),
        lambda: verify_dag(root, fetch, source="fuzz"),
    ):
        try:
            results.append(walk())
        except StorageError as exc:
            results.append(exc)
    read, _, verified = results
    # verify_dag judges a DAG exactly as reading it whole does
    if max_size is None:
        assert isinstance(read, bytes) == isinstance(verified, int), (read, verified)
    return results


def test_dag_walks() -> None:
    # each case builds and walks up to 12 blocks three ways: 100 cases keep CI near 3 s
    fuzz("DAG walks", crafted_dags(), _walk, (StorageError,), ci_examples=100)
