from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.tiny import ByteTokenizer

from r3mes.work.data import (
    HEADER_SIZE,
    HELDOUT_EVERY,
    TokenDataset,
    assign_shard,
    build_dataset,
    preferred_shard,
    read_header,
    shard_of,
)
from r3mes.work.domain import DOMAIN_MODULES, build_domain_corpus, domain_corpus_source
from r3mes.work.errors import DatasetError


def test_build_and_read_back_tokens(tmp_path: Path, byte_tokenizer: ByteTokenizer) -> None:
    texts = ["abcdefgh", "ijklmnop", "q"]
    path = build_dataset(texts, byte_tokenizer, chunk_len=4, out_path=tmp_path / "d.bin")
    ds = TokenDataset(path)
    stream = [*b"abcdefgh", 2, *b"ijklmnop", 2, *b"q", 2]
    n = len(stream) // 4
    assert len(ds) == n and ds.chunk_len == 4
    assert ds.chunks(list(range(n))).reshape(-1).tolist() == stream[: n * 4]
    assert isinstance(ds._tokens, np.memmap)  # streamed from disk, not loaded
    assert ds.header.tokenizer_hash == read_header(path).tokenizer_hash
    assert path.stat().st_size == HEADER_SIZE + n * 4 * 2  # uint16 tokens


def test_dataset_is_deterministic(tmp_path: Path, byte_tokenizer: ByteTokenizer) -> None:
    texts = build_domain_corpus()[:2]
    a = build_dataset(texts, byte_tokenizer, chunk_len=16, out_path=tmp_path / "a")
    b = build_dataset(texts, byte_tokenizer, chunk_len=16, out_path=tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()


def test_corrupt_files_are_rejected(tmp_path: Path, byte_tokenizer: ByteTokenizer) -> None:
    path = build_dataset(["x" * 100], byte_tokenizer, chunk_len=8, out_path=tmp_path / "d")
    data = path.read_bytes()
    cases = {
        "truncated": data[:-1],
        "magic": b"NOTMAGIC" + data[8:],
        "version": data[:8] + (9).to_bytes(4, "little") + data[12:],
        "short": data[:10],
    }
    for name, blob in cases.items():
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(DatasetError):
            TokenDataset(bad)
    with pytest.raises(DatasetError):
        TokenDataset(tmp_path / "missing")


def test_build_rejects_bad_input_and_keeps_old_file(
    tmp_path: Path, byte_tokenizer: ByteTokenizer
) -> None:
    path = build_dataset(["y" * 64], byte_tokenizer, chunk_len=8, out_path=tmp_path / "d")
    before = path.read_bytes()
    with pytest.raises(DatasetError, match="fewer than"):
        build_dataset(["tiny"], byte_tokenizer, chunk_len=64, out_path=path)
    with pytest.raises(DatasetError, match="strings"):
        build_dataset(["ok", 3], byte_tokenizer, chunk_len=2, out_path=path)  # type: ignore[list-item]
    with pytest.raises(DatasetError, match="chunk_len"):
        build_dataset(["ok"], byte_tokenizer, chunk_len=1, out_path=path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_split_and_shards_partition_the_data(domain_dataset: TokenDataset) -> None:
    train = set(domain_dataset.train_indices().tolist())
    held = set(domain_dataset.heldout_indices().tolist())
    assert not train & held and train | held == set(range(len(domain_dataset)))
    assert all(i % HELDOUT_EVERY == HELDOUT_EVERY - 1 for i in held)
    shards = [shard_of(domain_dataset, shard_index=s, n_shards=7) for s in range(7)]
    seen = [i for sh in shards for i in sh.indices]
    assert sorted(seen) == sorted(train) and len(seen) == len(set(seen))
    sizes = [len(sh) for sh in shards]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(DatasetError):
        shard_of(domain_dataset, shard_index=7, n_shards=7)
    with pytest.raises(DatasetError, match="shards"):
        shard_of(domain_dataset, shard_index=0, n_shards=len(train) + 1)


def test_shard_assignment_is_deterministic_and_distinct() -> None:
    miners = [f"remes1miner{i}" for i in range(8)]
    first = preferred_shard(seed=42, miner=miners[0], n_shards=8)
    assert first == preferred_shard(seed=42, miner=miners[0], n_shards=8)
    claimed: set[int] = set()
    for m in miners:
        s = assign_shard(seed=42, miner=m, n_shards=8, claimed=frozenset(claimed))
        claimed.add(s)
    assert claimed == set(range(8))
    # every shard taken: the preferred one is reused rather than failing
    assert assign_shard(seed=42, miner=miners[0], n_shards=8, claimed=frozenset(claimed)) == first
    # the round seed moves shards around
    by_seed = {preferred_shard(seed=s, miner=miners[0], n_shards=1000) for s in range(20)}
    assert len(by_seed) > 10
    with pytest.raises(DatasetError):
        preferred_shard(seed=-1, miner="m", n_shards=4)


def test_domain_corpus_is_deterministic_and_recorded() -> None:
    a, b = build_domain_corpus(), build_domain_corpus()
    assert a == b and len(a) == len(DOMAIN_MODULES)
    assert a[0].startswith(f"# file: {DOMAIN_MODULES[0]}.py\n")
    assert "PSF" in domain_corpus_source()
    assert sum(len(t) for t in a) > 500_000
    with pytest.raises(DatasetError, match="not found"):
        build_domain_corpus(("no_such_module_xyz",))


def test_tokenizer_fingerprint_uses_the_serialized_tokenizer(byte_tokenizer: ByteTokenizer) -> None:
    from r3mes.work.data import tokenizer_fingerprint

    class Serialized(type(byte_tokenizer)):  # type: ignore[misc]
        def __init__(self, blob: str) -> None:
            self.blob = blob

        def to_json(self) -> str:
            return self.blob

    assert tokenizer_fingerprint(Serialized("a")) == tokenizer_fingerprint(Serialized("a"))
    assert tokenizer_fingerprint(Serialized("a")) != tokenizer_fingerprint(Serialized("b"))
    assert tokenizer_fingerprint(byte_tokenizer) == tokenizer_fingerprint(type(byte_tokenizer)())


def test_shipped_tokenizer_builds_a_dataset(tmp_path: Path) -> None:
    from r3mes.model.tokenizer import load_tokenizer

    try:
        from r3mes.model.shipped import shipped_model_dir

        tok = load_tokenizer(shipped_model_dir())
    except Exception as exc:  # the shipped model is built by another package
        pytest.skip(f"shipped tokenizer unavailable: {exc}")
    path = build_dataset(build_domain_corpus()[:1], tok, chunk_len=64, out_path=tmp_path / "d")
    ds = TokenDataset(path)
    assert len(ds) > 10 and int(ds.chunks([0, 1]).max()) < tok.vocab_size


def test_entry_points_reject_wrong_types(
    tmp_path: Path, byte_tokenizer: ByteTokenizer, domain_dataset: TokenDataset
) -> None:
    with pytest.raises(DatasetError, match="chunk_len"):
        build_dataset(["x" * 64], byte_tokenizer, chunk_len=2.5, out_path=tmp_path / "d")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset(["x" * 64], byte_tokenizer, chunk_len=8, out_path=tmp_path / "no" / "d")
    with pytest.raises(DatasetError, match="path"):
        build_dataset(["x" * 64], byte_tokenizer, chunk_len=8, out_path=5)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="integers"):
        shard_of(domain_dataset, shard_index=0, n_shards=2.0)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="integers"):
        shard_of(domain_dataset, shard_index="0", n_shards=2)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="miner"):
        preferred_shard(seed=1, miner=5, n_shards=4)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="seed"):
        preferred_shard(seed=1.0, miner="m", n_shards=4)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="n_shards"):
        assign_shard(seed=1, miner="m", n_shards=True)
    with pytest.raises(DatasetError, match="claimed"):
        assign_shard(seed=1, miner="m", n_shards=4, claimed=[1])  # type: ignore[arg-type]
    assert not list(tmp_path.glob("**/*.tmp"))
