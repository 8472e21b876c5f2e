"""Kubo-identical CIDs: known `ipfs add` vectors for both profiles, including multi-level DAGs.

The large vectors come from Kubo's own CID-profile tests (test/cli/cid_profiles_test.go),
whose files are ChaCha20 keystreams keyed by sha256(seed) with a zero nonce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from r3mes.storage.reader import iter_dag_cids, iter_file
from r3mes.storage.unixfs import (
    DagBuilder,
    DagParams,
    build_dag,
    compute_cid,
    decode_file_node,
    root_of,
)


def deterministic_bytes(size: int, seed: str) -> Iterator[bytes]:
    """Kubo's testutils.DeterministicRandomReader in Python."""
    key = hashlib.sha256(seed.encode()).digest()
    encryptor = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), None).encryptor()
    left = size
    while left:
        n = min(left, 1 << 20)
        yield encryptor.update(b"\x00" * n)
        left -= n


@pytest.mark.parametrize(
    ("data", "version", "expected"),
    [
        (b"", 0, "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
        (b"", 1, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
        (b"hello world\n", 0, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
        (b"hello\n", 0, "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"),
        (b"hello\n", 1, "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"),
        (b"hello world", 0, "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"),
        (b"hello world", 1, "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
    ],
)
def test_small_file_vectors(data: bytes, version: int, expected: str) -> None:
    assert compute_cid(data, cid_version=version) == expected


@pytest.mark.parametrize(
    ("size_kib", "expected"),
    [
        (44544, "QmUbBALi174SnogsUzLpYbD4xPiBSFANF4iztWCsHbMKh2"),  # 174 leaves, one level
        (44800, "QmepeWtdmS1hHXx1oZXsPUv6bMrfRRKfZcoPPU4eEfjnbf"),  # 175 leaves, two levels
    ],
)
def test_v0_multi_chunk_vectors(size_kib: int, expected: str) -> None:
    blocks = build_dag(deterministic_bytes(size_kib * 1024, "v0-seed"), DagParams(cid_version=0))
    assert str(root_of(blocks)) == expected


@pytest.mark.parametrize(
    ("size_mib", "expected"),
    [
        (1024, "bafybeihmf37wcuvtx4hpu7he5zl5qaf2ineo2lqlfrapokkm5zzw7zyhvm"),
        (1025, "bafybeihmzokxxjqwxjcryerhp5ezpcog2wcawfryb2xm64xiakgm4a5jue"),
    ],
)
def test_v1_raw_leaves_multi_chunk_vectors(size_mib: int, expected: str) -> None:
    """Kubo's unixfs-v1-2025 profile (1 MiB chunks, 1024 links): same encoder, raw leaves."""
    params = DagParams(cid_version=1, chunk_size=1 << 20, max_links=1024)
    blocks = build_dag(deterministic_bytes(size_mib << 20, "v1-2025-seed"), params)
    assert str(root_of(blocks)) == expected


def test_v1_multi_chunk_root_carries_filesize_and_blocksizes() -> None:
    data = bytes(range(256)) * 2049  # 524544 bytes: two full chunks and a tail
    blocks = list(build_dag([data]))
    root = decode_file_node(blocks[-1].data)
    assert root.filesize == len(data)
    assert root.blocksizes == (262144, 262144, 256)
    assert len(root.links) == 3 and all(c.codec == 0x55 for c in root.links)
    assert compute_cid(data).startswith("bafybei")


def test_balanced_shape_matches_kubo_for_small_fanout() -> None:
    """With max_links=3 and 10 leaves Kubo builds depth 3: [[3 x 3 leaves], [[1 leaf]]]."""
    builder = DagBuilder(params=DagParams(cid_version=1, chunk_size=1, max_links=3))
    blocks = []
    for i in range(10):
        blocks += builder.add_chunk(bytes([i]))
    root_cid, tail = builder.finish()
    blocks += tail
    by_cid = {b.cid: b for b in blocks}
    root = decode_file_node(by_cid[root_cid].data)
    assert root.blocksizes == (9, 1)
    last = decode_file_node(by_cid[root.links[1]].data)
    assert last.blocksizes == (1,)
    assert decode_file_node(by_cid[last.links[0]].data).blocksizes == (1,)


def test_chunking_is_independent_of_how_bytes_arrive() -> None:
    data = bytes(range(251)) * 3000
    whole = root_of(build_dag([data]))
    pieces = [data[i : i + 7777] for i in range(0, len(data), 7777)]
    assert root_of(build_dag(pieces)) == whole


def test_decode_rejects_inconsistent_node() -> None:
    with pytest.raises(ValueError):
        decode_file_node(b"\x0a\x04\x08\x02\x18\x05")  # filesize 5 without data or children
    with pytest.raises(ValueError):
        decode_file_node(b"\xff\xff")


def test_params_are_validated() -> None:
    with pytest.raises(ValueError):
        DagParams(cid_version=2)
    with pytest.raises(ValueError):
        DagParams(max_links=1)


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=400),
    chunk=st.integers(min_value=1, max_value=17),
    links=st.integers(min_value=2, max_value=5),
    version=st.sampled_from([0, 1]),
)
def test_any_dag_reads_back_verified(data: bytes, chunk: int, links: int, version: int) -> None:
    """Property: for any size and fan-out, the verified reader returns exactly the input."""
    blocks = {b.cid: b.data for b in build_dag([data], DagParams(version, chunk, links))}
    root = root_of(build_dag([data], DagParams(version, chunk, links)))
    assert b"".join(iter_file(root, blocks.__getitem__, source="test")) == data
    assert set(
        iter_dag_cids(root, blocks.__getitem__, source="t", exists=blocks.__contains__)
    ) == set(blocks)
