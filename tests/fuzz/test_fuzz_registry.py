"""Fuzz bundle extraction: mutated real bundles, and tars built from hostile entry lists."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

from hypothesis import strategies as st

from fuzz.harness import fuzz
from fuzz.mutations import mutated
from r3mes.registry.bundle import BundleLimits, pack_dir, unpack_bundle
from r3mes.registry.errors import RegistryError

LIMITS = BundleLimits(max_files=200, max_total=1 << 20)


def _unpack(data: bytes) -> object:
    with tempfile.TemporaryDirectory(prefix="r3mes-fuzz-") as tmp:
        return unpack_bundle(data, Path(tmp) / "out", limits=LIMITS)


def _seed_bundles() -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        (root / "sub" / "deeper").mkdir(parents=True)
        (root / "config.json").write_text('{"hidden": 32}')
        (root / "sub" / "w.bin").write_bytes(bytes(range(256)) * 3)
        (root / "sub" / "deeper" / "empty").write_bytes(b"")
        return [pack_dir(root)]


def test_unpack_mutated_bundles() -> None:
    fuzz("unpack_bundle", mutated(_seed_bundles(), max_random=2048), _unpack, (RegistryError,))


names = st.one_of(
    st.sampled_from(["a", "a/b", "a/", "b/c/d", "../x", "/abs", "a/./b", "a//b", "c\\d", ""]),
    st.integers(1, 2500).map(lambda n: "d/" * n + "f"),
    st.integers(200, 300).map(lambda n: "n" * n),
    st.text(max_size=20),
)
entry_kinds = st.sampled_from(
    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
)


@st.composite
def hostile_tars(draw: st.DrawFn) -> bytes:
    """A well-formed tar (any format) of entries with conflicting, deep, odd or linked names."""
    buf = io.BytesIO()
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, data in draw(
            st.lists(st.tuples(names, entry_kinds, st.binary(max_size=16)), max_size=6)
        ):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "a" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            try:
                tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
            except (ValueError, UnicodeError):  # a name this tar format cannot hold
                continue
    return buf.getvalue()


def test_unpack_hostile_entry_lists() -> None:
    fuzz("unpack_bundle/entries", hostile_tars(), _unpack, (RegistryError,))
