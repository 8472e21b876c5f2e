"""One deterministic, safe archive for a directory artifact (a model or adapter folder).

`pack_dir` writes a POSIX (pax) tar with entries sorted by path, mtime 0, uid/gid 0, empty
owner names, mode 0644 for files and 0755 for folders, no compression: the same folder always
gives the same bytes, hence the same SHA-256 and CID. `unpack_bundle` accepts only regular
files and folders with relative, normalised names (no absolute paths, no `..`, no links or
devices; at most `MAX_DEPTH` folders deep and names a filesystem holds; each path once, no
file used as a folder), within size and count limits, and writes them under a temp folder
that is renamed into place, so `dest` is either complete or absent. Every defect is a
`BundleError`.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from r3mes.registry.errors import BundleError

MAX_FILES = 10_000
MAX_TOTAL = 64 * 1024**3
MAX_DEPTH = 64
"""Most folders an entry's path may cross (model folders nest two or three)."""
MAX_NAME_BYTES = 255
"""Longest file or folder name (in UTF-8) Linux and macOS filesystems accept."""
MAX_PATH_BYTES = 1024
"""Longest entry path (in UTF-8), well inside the 4096 bytes Linux allows a whole path."""


@dataclass(frozen=True)
class BundleLimits:
    """Bounds `unpack_bundle` enforces."""

    max_files: int = MAX_FILES
    """Most entries (files and folders) allowed."""
    max_total: int = MAX_TOTAL
    """Most bytes of file content allowed in total."""


def _entries(root: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for path in root.rglob("*"):
        if path.is_symlink():
            raise BundleError(f"{path} is a symbolic link; bundles hold only files and folders")
        if not (path.is_file() or path.is_dir()):
            raise BundleError(f"{path} is not a regular file or folder")
        out.append((path.relative_to(root).as_posix(), path))
    return sorted(out)


def _info(name: str, *, is_dir: bool, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size = 0 if is_dir else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_dir(directory: Path) -> bytes:
    """Deterministic tar of `directory`'s contents (the folder itself is not named)."""
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"{root} is not a folder")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in _entries(root):
            if path.is_dir():
                tar.addfile(_info(name, is_dir=True, size=0))
            else:
                data = path.read_bytes()
                tar.addfile(_info(name, is_dir=False, size=len(data)), io.BytesIO(data))
    return buf.getvalue()


def _safe_name(name: str) -> PurePosixPath:
    """`name` as a relative path that stays inside the bundle and that any filesystem holds."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise BundleError(f"entry {name[:200]!r} has an absolute or odd path")
    parts = name.rstrip("/").split("/")
    if any(part in ("..", ".", "") for part in parts):
        raise BundleError(f"entry {name[:200]!r} is not a normalised relative path")
    if len(parts) > MAX_DEPTH:
        raise BundleError(
            f"entry {name[:200]!r} is {len(parts)} folders deep; at most {MAX_DEPTH} are allowed"
        )
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"entry {name[:200]!r} is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES or any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        raise BundleError(
            f"entry {name[:200]!r} is too long: at most {MAX_PATH_BYTES} bytes, "
            f"{MAX_NAME_BYTES} per name"
        )
    return PurePosixPath(*parts)


def unpack_bundle(
    data: bytes | Path, dest: Path, *, limits: BundleLimits | None = None
) -> dict[str, str]:
    """Extract `data` (bytes, or the path of a bundle file, read in a stream) into `dest`,
    which must not exist; return {path: sha256} of the files written."""
    limits = limits or BundleLimits()
    dest = Path(dest)
    if dest.exists():
        raise BundleError(f"{dest} already exists; remove it or pick another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-unpack-"))
    try:
        digests = _extract(data, tmp, limits)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digests


def _open_tar(data: bytes | Path) -> tarfile.TarFile:
    if isinstance(data, Path):
        return tarfile.open(name=data, mode="r:")
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")


def _copy_member(handle: IO[bytes], target: Path) -> str:
    digest = hashlib.sha256()
    with target.open("wb") as out:
        while piece := handle.read(1 << 20):
            digest.update(piece)
            out.write(piece)
    return digest.hexdigest()


def _extract(data: bytes | Path, into: Path, limits: BundleLimits) -> dict[str, str]:
    digests: dict[str, str] = {}
    try:
        tar = _open_tar(data)
    except tarfile.TarError as exc:
        raise BundleError(f"not a tar archive: {exc}") from exc
    with tar:
        try:
            _extract_members(tar, into, limits, digests)
        except (tarfile.TarError, EOFError) as exc:
            raise BundleError(f"corrupt archive: {exc}") from exc
    return digests


def _extract_members(
    tar: tarfile.TarFile, into: Path, limits: BundleLimits, digests: dict[str, str]
) -> None:
    total = 0
    members = tar.getmembers()
    if len(members) > limits.max_files:
        raise BundleError(f"{len(members)} entries, over the limit of {limits.max_files}")
    kinds: dict[PurePosixPath, str] = {}  # every path written so far: "dir" or "file"
    for member in members:
        rel = _safe_name(member.name)
        if not (member.isdir() or member.isreg()):
            raise BundleError(f"entry {member.name!r} is not a regular file or folder")
        _claim(kinds, rel, "dir" if member.isdir() else "file")
        if member.isdir():
            _make_dirs(into, rel)
            continue
        total += member.size
        if total > limits.max_total:
            raise BundleError(f"content over the limit of {limits.max_total} bytes")
        handle = tar.extractfile(member)
        if handle is None:
            raise BundleError(f"entry {member.name!r} has no content")
        _make_dirs(into, rel.parent)
        digests[rel.as_posix()] = _copy_member(handle, into / rel)


def _claim(kinds: dict[PurePosixPath, str], rel: PurePosixPath, kind: str) -> None:
    """Record `rel` as `kind` and its folders as folders; a file named twice, or used as a
    folder (`a` then `a/b`), or a folder named as a file, is a BundleError."""
    for parent in reversed(rel.parents[:-1]):  # outermost first; [-1] is "."
        if kinds.setdefault(parent, "dir") != "dir":
            raise BundleError(f"entry {rel.as_posix()!r} is inside {parent.as_posix()!r}, a file")
    previous = kinds.get(rel)
    if previous == "file" and kind == "file":
        raise BundleError(f"entry {rel.as_posix()!r} appears twice")
    if previous is not None and previous != kind:
        raise BundleError(f"entry {rel.as_posix()!r} is both a folder and a file")
    kinds[rel] = kind


def _make_dirs(into: Path, rel: PurePosixPath) -> None:
    """Create `into/rel` one level at a time (`_claim` has ruled out files on the way)."""
    target = into
    for part in rel.parts:
        target = target / part
        target.mkdir(exist_ok=True)
