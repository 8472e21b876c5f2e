"""Installed artifacts on disk: `$R3MES_HOME/{models,datasets,adapters}/<id>/<version>/`.

A model or adapter folder holds the unpacked bundle; a dataset folder holds the file as `data`.
Each folder carries `.r3mes-artifact.json` (the record plus a SHA-256 per file), written
inside a temp folder that is renamed into place, so a folder either is complete or does not
exist. `verify` re-hashes every file against that manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from r3mes.paths import Home
from r3mes.registry.bundle import unpack_bundle
from r3mes.registry.errors import RegistryError
from r3mes.registry.records import ArtifactRecord, installable
from r3mes.storage.errors import StorageWriteError
from r3mes.storage.tempfiles import (
    TEMP_PREFIX,
    make_temp_dir,
    make_temp_file,
    remove_stale,
    unlink_quietly,
)

log = logging.getLogger(__name__)
MANIFEST = ".r3mes-artifact.json"
DATASET_FILE = "data"
_PIECE = 1024 * 1024


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(_PIECE):
            digest.update(piece)
    return digest.hexdigest()


class LocalArtifacts:
    """Where installed artifacts live and how they are installed, checked and removed."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def kind_dir(self, kind: str) -> Path:
        return {"model": self.home.models, "dataset": self.home.datasets}.get(
            kind, self.home.adapters
        )

    def path_for(self, record: ArtifactRecord) -> Path:
        """`<kind>s/<id>/<version>/`; InvalidArtifactRecord if `record` is not installable
        (a ledger-legal id such as "a/../../b" never becomes a path)."""
        installable(record)
        return self.kind_dir(record.kind) / record.id / str(record.version)

    def manifest(self, record: ArtifactRecord) -> dict[str, object] | None:
        path = self.path_for(record) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def is_installed(self, record: ArtifactRecord) -> bool:
        """Installed with exactly this approved file (by SHA-256)."""
        manifest = self.manifest(record)
        return manifest is not None and manifest.get("sha256") == record.sha256

    def verify(self, record: ArtifactRecord) -> bool:
        """Re-hash every installed file against the manifest."""
        manifest = self.manifest(record)
        if manifest is None or manifest.get("sha256") != record.sha256:
            return False
        files = manifest.get("files")
        if not isinstance(files, dict):
            return False
        root = self.path_for(record)
        present = {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.name != MANIFEST
        }
        if present != set(files):
            return False
        return all(_file_digest(root / name) == digest for name, digest in files.items())

    def install(self, record: ArtifactRecord, payload: Path) -> Path:
        """Install a verified artifact file; returns the artifact folder."""
        final = self.path_for(record)
        parent = final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale(parent)  # staging folders of installs killed earlier
            staging = make_temp_dir(parent)
        except OSError as exc:
            raise StorageWriteError(str(parent), exc.strerror or str(exc)) from exc
        try:
            files = self._stage(record, payload, staging / "content")
            manifest = {**record.to_dict(), "files": files}
            (staging / "content" / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
            self._swap_in(staging / "content", final)
        except OSError as exc:
            raise StorageWriteError(str(final), exc.strerror or str(exc)) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("installed %s at %s", record.ref, final)
        return final

    def _stage(self, record: ArtifactRecord, payload: Path, into: Path) -> dict[str, str]:
        if record.kind == "dataset":
            into.mkdir()
            os.replace(payload, into / DATASET_FILE)
            return {DATASET_FILE: record.sha256}
        return unpack_bundle(payload, into)

    def _swap_in(self, staged: Path, final: Path) -> None:
        old = None
        if final.exists():
            old = final.with_name(f"{TEMP_PREFIX}old-{final.name}-{os.getpid()}")
            os.replace(final, old)
        try:
            os.replace(staged, final)
        except OSError:
            if old is not None:
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def remove(self, record: ArtifactRecord) -> None:
        """Delete an installed artifact folder (used for rollback)."""
        path = self.path_for(record)
        if path.exists():
            doomed = path.with_name(f"{TEMP_PREFIX}rm-{path.name}-{os.getpid()}")
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def iter_dataset(self, record: ArtifactRecord, *, chunk_size: int = _PIECE) -> Iterator[bytes]:
        """Stream an installed dataset file in pieces, never loading it whole."""
        if record.kind != "dataset":
            raise RegistryError(f"{record.ref} is not a dataset")
        path = self.path_for(record) / DATASET_FILE
        if not self.is_installed(record) or not path.is_file():
            raise RegistryError(
                f"{record.ref} is not installed; run `r3mes registry pull {record.id}`"
            )
        with path.open("rb") as handle:
            while piece := handle.read(chunk_size):
                yield piece

    def iter_lines(self, record: ArtifactRecord) -> Iterator[bytes]:
        """Stream an installed dataset line by line (JSONL and text datasets)."""
        tail = b""
        for piece in self.iter_dataset(record):
            lines = (tail + piece).split(b"\n")
            tail = lines.pop()
            yield from (line for line in lines if line)
        if tail:
            yield tail


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON via temp file + fsync + rename; StorageWriteError (naming `path`) when the
    folder is read-only or full, with `path` left as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = make_temp_file(path.parent, suffix=".json")
    except OSError as exc:
        raise StorageWriteError(str(path), exc.strerror or str(exc)) from exc
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, sort_keys=True, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageWriteError(str(path), exc.strerror or str(exc)) from exc
    finally:
        unlink_quietly(tmp)
