"""Deterministic bundles and safe extraction."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from r3mes.registry.bundle import BundleLimits, pack_dir, unpack_bundle
from r3mes.registry.errors import BundleError


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden": 32}')
    (root / "sub" / "weights.safetensors").write_bytes(os.urandom(1000))


def test_pack_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    first = pack_dir(src)
    os.utime(src / "config.json", (1, 1))
    assert pack_dir(src) == first
    digests = unpack_bundle(first, tmp_path / "out")
    assert sorted(digests) == ["config.json", "sub/weights.safetensors"]
    for name in digests:
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()


def test_pack_rejects_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    (src / "link").symlink_to(src / "config.json")
    with pytest.raises(BundleError):
        pack_dir(src)


def _evil_tar(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


@pytest.mark.parametrize(
    "archive",
    [
        _evil_tar("../escape.txt"),
        _evil_tar("/abs.txt"),
        _evil_tar("a/../../b"),
        _evil_tar("link", tarfile.SYMTYPE),
        b"not a tar at all" * 100,
    ],
)
def test_unsafe_archives_are_rejected_and_leave_nothing(tmp_path: Path, archive: bytes) -> None:
    dest = tmp_path / "out"
    with pytest.raises(BundleError):
        unpack_bundle(archive, dest)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "escape.txt").exists()


def test_limits_are_enforced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    with pytest.raises(BundleError):
        unpack_bundle(pack_dir(src), tmp_path / "o1", limits=BundleLimits(max_total=10))
    with pytest.raises(BundleError):
        unpack_bundle(pack_dir(src), tmp_path / "o2", limits=BundleLimits(max_files=1))
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(BundleError):
        unpack_bundle(pack_dir(src), existing)


def test_truncated_archive_and_path_input(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    bundle = pack_dir(src)
    with pytest.raises(BundleError):
        unpack_bundle(bundle[:2500], tmp_path / "half")  # cut inside weights.safetensors
    assert not (tmp_path / "half").exists()
    path = tmp_path / "bundle.tar"
    path.write_bytes(bundle)
    digests = unpack_bundle(path, tmp_path / "from-path")
    assert (tmp_path / "from-path" / "config.json").read_text() == '{"hidden": 32}'
    assert len(digests) == 2


def _tar(*entries: tuple[str, bytes | None]) -> bytes:
    """A tar of (name, data) entries in order; data None makes a folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.size = len(data or b"")
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    "entries, match",
    [
        ((("a", b"1"), ("a/b", b"2")), "inside 'a', a file"),  # was FileExistsError
        ((("a", b"1"), ("a/", None)), "both a folder and a file"),  # was FileExistsError
        ((("a/b", b"1"), ("a", b"2")), "both a folder and a file"),
        ((("a", b"1"), ("a", b"2")), "appears twice"),
        (((("d/" * 2000) + "f", b"1"),), "2001 folders deep"),  # was RecursionError
        ((("n" * 256, b"1"),), "too long"),  # was OSError (ENAMETOOLONG)
        ((("a\udcff", b"1"),), "not valid UTF-8"),
    ],
    ids=["file-then-child", "file-then-dir", "dir-then-file", "twice", "deep", "long", "utf8"],
)
def test_conflicting_deep_or_odd_paths_are_bundle_errors(
    tmp_path: Path, entries: tuple[tuple[str, bytes | None], ...], match: str
) -> None:
    """Issue 19 item 12: these raised FileExistsError, RecursionError or OSError."""
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match=match):
        unpack_bundle(_tar(*entries), dest)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_folders_named_before_after_or_never_all_unpack(tmp_path: Path) -> None:
    archive = _tar(("a/b/c", b"1"), ("a/", None), ("a/b/", None), ("x/", None), ("x/y", b"2"))
    assert sorted(unpack_bundle(archive, tmp_path / "out")) == ["a/b/c", "x/y"]
    assert (tmp_path / "out" / "a" / "b" / "c").read_bytes() == b"1"
