"""CID agreement with real Kubo: R3MES computes exactly what `ipfs add` prints."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kubo import ipfs_binary

from r3mes.storage.directory import DirectoryTooLarge, build_directory, directory_cid
from r3mes.storage.unixfs import DagParams, build_dag, root_of

KIB = 1024
SIZES = [0, 1, 256 * KIB - 1, 256 * KIB, 256 * KIB + 1, 1024 * KIB + 7]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised Kubo repo: `ipfs add --only-hash` needs no daemon."""
    path = tmp_path_factory.mktemp("kubo-repo")
    env = {**os.environ, "IPFS_PATH": str(path)}
    subprocess.run(
        [ipfs_binary(), "init", "--profile=test"], env=env, check=True, capture_output=True
    )
    return path


def kubo_add(repo: Path, target: Path, *flags: str) -> str:
    done = subprocess.run(
        [ipfs_binary(), "add", "--only-hash", "--quiet", "--recursive", *flags, str(target)],
        env={**os.environ, "IPFS_PATH": str(repo)},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return done.stdout.split()[-1]


def r3mes_cid(path: Path, cid_version: int) -> str:
    def pieces() -> Iterator[bytes]:  # streamed, as the blockstore reads big files
        with path.open("rb") as handle:
            yield from iter(lambda: handle.read(1 << 20), b"")

    return str(root_of(build_dag(pieces(), DagParams(cid_version=cid_version))))


def _data(size: int) -> bytes:
    return bytes((i * 31 + size) % 251 for i in range(min(size, 4096))) * (size // 4096 + 1)


@pytest.mark.parametrize("size", SIZES)
def test_file_cids_equal_kubos(repo: Path, tmp_path: Path, size: int) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(_data(size)[:size])
    assert kubo_add(repo, path, "--cid-version=0") == r3mes_cid(path, 0)
    assert kubo_add(repo, path, "--cid-version=1") == r3mes_cid(path, 1)
    assert kubo_add(repo, path, "--cid-version=1", "--chunker=size-262144") == r3mes_cid(path, 1)


@pytest.mark.slow
def test_100_mb_file_cid_equals_kubos(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with path.open("wb") as handle:
        for i in range(100):
            handle.write(bytes([i]) + block[1:])
    for version in (0, 1):
        assert kubo_add(repo, path, f"--cid-version={version}") == r3mes_cid(path, version)


def _tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "big.bin").write_bytes(_data(600_000)[:600_000])
    (root / "sub" / "deeper" / "z").write_bytes(b"z" * 300_000)
    (root / "emptydir").mkdir()
    (root / ".hidden").write_bytes(b"skipped, as ipfs add skips it")
    (root / "ünïcode name").write_bytes(b"names are UTF-8 bytes, sorted bytewise")
    return root


@pytest.mark.parametrize("version", [0, 1])
def test_directory_cids_equal_ipfs_add_r(repo: Path, tmp_path: Path, version: int) -> None:
    root = _tree(tmp_path / "tree")
    assert kubo_add(repo, root, f"--cid-version={version}") == directory_cid(
        root, cid_version=version
    )
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert kubo_add(repo, empty, f"--cid-version={version}") == directory_cid(
        empty, cid_version=version
    )


def test_directory_refuses_what_it_cannot_represent(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "link").symlink_to(tmp_path)
    with pytest.raises(Exception, match="symbolic link"):
        build_directory(tmp_path / "dir")
    with pytest.raises(Exception, match="not a directory"):
        build_directory(tmp_path / "missing")
    big = tmp_path / "wide"
    big.mkdir()
    for i in range(5000):  # ~5000 * (60-byte name + 36-byte CID) > 256 KiB of links
        (big / f"{i:060d}").write_bytes(b"")
    with pytest.raises(DirectoryTooLarge):
        build_directory(big)
