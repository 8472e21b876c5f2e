"""Temp files of interrupted writes: how they are named and when they are cleaned up.

Every atomic write in R3MES (blocks, downloads, installs) first writes a temp entry whose name
starts with `TEMP_PREFIX`, then renames it into place. A process killed in between leaves that
entry behind; nothing reads it (the name is never a CID or an artifact path), but it takes
disk space. `remove_stale` deletes such entries once they have not been modified for
`STALE_AFTER_S` seconds, which no write in progress reaches: an active write touches its temp
file with every piece it appends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_PREFIX = ".r3mes-tmp-"
STALE_AFTER_S = 600.0
# Names earlier releases used for the same purpose (cleaned up as well).
_LEGACY = (".tmp-",)


def make_temp_file(folder: Path, suffix: str = ".part") -> tuple[int, str]:
    """`mkstemp` in `folder` with the R3MES temp prefix; returns (fd, path)."""
    return tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)


def make_temp_dir(folder: Path) -> Path:
    """`mkdtemp` in `folder` with the R3MES temp prefix."""
    return Path(tempfile.mkdtemp(dir=folder, prefix=TEMP_PREFIX))


def is_temp_name(name: str) -> bool:
    """Whether `name` is one R3MES gives to temp entries."""
    return name.startswith(TEMP_PREFIX) or name.startswith(_LEGACY)


def remove_stale(
    folder: Path, *, older_than: float = STALE_AFTER_S, now: float | None = None
) -> int:
    """Delete temp entries directly in `folder` untouched for `older_than` seconds; return how
    many were deleted. A missing folder or an entry that vanishes meanwhile is not an error."""
    cutoff = (time.time() if now is None else now) - older_than
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not is_temp_name(entry.name):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.debug("could not remove stale temp %s: %s", entry.path, exc)
            continue
        removed += 1
    if removed:
        log.info("removed %d stale temp file(s) in %s", removed, folder)
    return removed


def unlink_quietly(path: str | Path) -> None:
    """Remove a temp file if it still exists."""
    with contextlib.suppress(OSError):
        os.unlink(path)
