"""DownloadManager: fetch an approved artifact from the first source that has it, safely.

Sources are tried in order (local blockstore, Kubo, HTTP gateway, Hugging Face when configured).
Each attempt writes to a temp file beside the destination; the file is renamed into place only
after its size and SHA-256 match the approved record (and, for IPFS sources, after every block
matched its CID). Wrong bytes are discarded and the next source is tried; local disk failures
stop at once with a clear error, leaving nothing half-written.

Retries live in one layer: the network client (`KuboClient` retries transport errors and
502/503/504 with exponential backoff). The manager tries each source once, within an overall
deadline per source (`deadline_s` plus the time the file takes at `min_bytes_per_s`), so one
unresponsive source cannot stall a download for long.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from r3mes.errors import R3mesError
from r3mes.registry.errors import ChecksumMismatch, DownloadFailed, RegistryError
from r3mes.registry.records import ArtifactRecord
from r3mes.storage.blockstore import Blockstore
from r3mes.storage.errors import (
    BlockNotFound,
    CidMismatch,
    RemoteError,
    StorageError,
    StorageWriteError,
)
from r3mes.storage.kubo import KuboClient, remaining
from r3mes.storage.multiformats import parse_cid
from r3mes.storage.tempfiles import TEMP_PREFIX, remove_stale, unlink_quietly

log = logging.getLogger(__name__)
_HASH_PIECE = 1024 * 1024
Progressed = Callable[[int], None] | None


class SourceUnavailable(StorageError):
    """A source cannot serve this artifact at all (not configured, not installed, no copy)."""


class ArtifactFetcher(Protocol):
    """One place an artifact's file can come from."""

    name: str

    def fetch(
        self,
        record: ArtifactRecord,
        dest: Path,
        on_bytes: Progressed = None,
        *,
        deadline: float | None = None,
    ) -> None:
        """Write the artifact's bytes to `dest` (a temp path the manager owns); call
        `on_bytes(n)` as bytes arrive when the source can report progress; give up with
        RemoteError at `deadline` (a `time.monotonic()` value) when the source is remote."""
        ...


class BlockstoreFetcher:
    """The local blockstore (CID-verified)."""

    def __init__(self, store: Blockstore) -> None:
        self.store = store
        self.name = "local blockstore"

    def fetch(
        self,
        record: ArtifactRecord,
        dest: Path,
        on_bytes: Progressed = None,
        *,
        deadline: float | None = None,
    ) -> None:
        if not self.store.has(record.cid):
            raise BlockNotFound(record.cid, self.name)
        self.store.cat_to_file(record.cid, dest, max_size=record.size, on_bytes=on_bytes)


class IpfsFetcher:
    """A Kubo node or an HTTP gateway through `KuboClient` (CID-verified)."""

    def __init__(self, client: KuboClient, name: str) -> None:
        self.client = client
        self.name = name

    def fetch(
        self,
        record: ArtifactRecord,
        dest: Path,
        on_bytes: Progressed = None,
        *,
        deadline: float | None = None,
    ) -> None:
        self.client.cat_to_file(
            record.cid, dest, max_size=record.size, on_bytes=on_bytes, deadline=deadline
        )


class HubFiles(Protocol):
    """The two Hugging Face Hub calls the fetcher needs (a seam for tests: the hub is an
    external service they cannot reach)."""

    def size(self, *, repo: str, filename: str, revision: str | None) -> int | None:
        """The file's size as the repo's metadata lists it (None when it lists none)."""
        ...

    def open(
        self, *, repo: str, filename: str, revision: str | None, timeout: float
    ) -> AbstractContextManager[Iterator[bytes]]:
        """The file's bytes, streamed."""
        ...


class HfHubFiles:
    """The real hub: URLs, auth headers and metadata from `huggingface_hub`, bytes streamed
    with httpx (redirects to the hub's CDN followed; the bytes are verified afterwards)."""

    def __init__(self, *, token: str | None = None, timeout: float = 30.0) -> None:
        try:
            import huggingface_hub
        except ImportError:
            raise SourceUnavailable("huggingface_hub is not installed") from None
        self._hub = huggingface_hub
        self._token = token
        self._timeout = timeout

    def size(self, *, repo: str, filename: str, revision: str | None) -> int | None:
        url = self._hub.hf_hub_url(repo, filename, revision=revision)
        meta = self._hub.get_hf_file_metadata(url, token=self._token, timeout=self._timeout)
        return None if meta.size is None else int(meta.size)

    @contextlib.contextmanager
    def open(
        self, *, repo: str, filename: str, revision: str | None, timeout: float
    ) -> Iterator[Iterator[bytes]]:
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        url = self._hub.hf_hub_url(repo, filename, revision=revision)
        headers = build_hf_headers(token=self._token)
        with httpx.stream(
            "GET", url, headers=headers, follow_redirects=True, timeout=timeout
        ) as response:
            if response.status_code != 200:
                raise RemoteError(url, f"HTTP {response.status_code}", status=response.status_code)
            yield response.iter_bytes()


class HuggingFaceFetcher:
    """`<kind>s/<id>/<version>` in the record's Hugging Face repo, when one is named.

    The repo's listed size must equal the approved size before a byte is fetched, and the
    transfer stops as soon as it goes past that size.
    """

    def __init__(
        self, *, token: str | None = None, timeout: float = 30.0, hub: HubFiles | None = None
    ) -> None:
        self.name = "Hugging Face"
        self._token = token
        self._timeout = timeout
        self._hub = hub

    def fetch(
        self,
        record: ArtifactRecord,
        dest: Path,
        on_bytes: Progressed = None,
        *,
        deadline: float | None = None,
    ) -> None:
        if not record.hf_repo:
            raise SourceUnavailable(f"{record.ref} names no Hugging Face repo")
        hub = self._hub or HfHubFiles(token=self._token, timeout=self._timeout)
        where = f"hf://{record.hf_repo}"
        repo, filename = record.hf_repo, f"{record.kind}s/{record.id}/{record.version}"
        try:
            listed = hub.size(repo=repo, filename=filename, revision=record.hf_revision)
        except R3mesError:
            raise
        except Exception as exc:  # huggingface_hub raises its own HTTP/repo error types
            raise RemoteError(where, f"{type(exc).__name__}: {exc}") from exc
        if listed is not None and listed != record.size:
            raise ChecksumMismatch(
                record.ref, self.name, f"the repo lists {listed} bytes, approved {record.size}"
            )
        left = remaining(deadline)
        timeout = self._timeout if left is None else max(0.001, min(self._timeout, left))
        try:
            with hub.open(
                repo=repo, filename=filename, revision=record.hf_revision, timeout=timeout
            ) as pieces:
                self._copy_capped(record, pieces, dest, on_bytes, deadline)
        except R3mesError:
            raise
        except Exception as exc:
            raise RemoteError(where, f"{type(exc).__name__}: {exc}") from exc

    def _copy_capped(
        self,
        record: ArtifactRecord,
        pieces: Iterator[bytes],
        dest: Path,
        on_bytes: Progressed,
        deadline: float | None,
    ) -> None:
        written = 0
        try:
            out = dest.open("wb")
        except OSError as exc:
            raise StorageWriteError(str(dest), exc.strerror or str(exc)) from exc
        with out:
            for piece in pieces:
                written += len(piece)
                if written > record.size:
                    raise ChecksumMismatch(
                        record.ref, self.name, f"more than the approved {record.size} bytes"
                    )
                left = remaining(deadline)
                if left is not None and left <= 0:
                    raise RemoteError(f"hf://{record.hf_repo}", "no full answer by the deadline")
                try:
                    out.write(piece)
                except OSError as exc:
                    raise StorageWriteError(str(dest), exc.strerror or str(exc)) from exc
                if on_bytes is not None:
                    on_bytes(len(piece))


def file_sha256(path: Path, advance: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(_HASH_PIECE):
            digest.update(piece)
            if advance:
                advance(len(piece))
    return digest.hexdigest()


class DownloadManager:
    """Fetch artifacts through `fetchers` in order, verified and atomic."""

    def __init__(
        self,
        fetchers: Sequence[ArtifactFetcher],
        *,
        progress: bool = False,
        cache: Blockstore | None = None,
        deadline_s: float = 120.0,
        min_bytes_per_s: float = 1_000_000.0,
    ) -> None:
        if deadline_s <= 0 or min_bytes_per_s <= 0:
            raise ValueError("deadline_s and min_bytes_per_s must be positive")
        self.fetchers = list(fetchers)
        self.progress = progress
        self.cache = cache
        self.deadline_s = deadline_s
        """Seconds each source gets for an empty file (retries included)."""
        self.min_bytes_per_s = min_bytes_per_s
        """Slowest transfer rate allowed for: a source gets `size / rate` seconds more."""

    def source_seconds(self, record: ArtifactRecord) -> float:
        """The overall time one source gets for `record`."""
        return self.deadline_s + record.size / self.min_bytes_per_s

    def download(self, record: ArtifactRecord, dest: Path) -> Path:
        """Put the verified artifact file at `dest`; DownloadFailed when no source works."""
        dest = Path(dest)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageWriteError(str(dest.parent), exc.strerror or str(exc)) from exc
        remove_stale(dest.parent)  # temp files of downloads killed earlier
        reasons: list[str] = []
        with self._progress() as bar:
            for fetcher in self.fetchers:
                if self._try_source(fetcher, record, dest, reasons, bar):
                    self._cache(fetcher, dest, record)
                    return dest
        raise DownloadFailed(record.ref, reasons)

    def _try_source(
        self,
        fetcher: ArtifactFetcher,
        record: ArtifactRecord,
        dest: Path,
        reasons: list[str],
        bar: Progress | None,
    ) -> bool:
        """One try at one source (its client retries transient network errors itself)."""
        tmp = dest.parent / f"{TEMP_PREFIX}{os.urandom(8).hex()}.part"
        deadline = time.monotonic() + self.source_seconds(record)
        try:
            progress = self._advance(bar, f"{record.id} <- {fetcher.name}", record)
            fetcher.fetch(record, tmp, progress, deadline=deadline)
            self._verify(record, tmp, fetcher.name, bar)
            os.replace(tmp, dest)
            log.info("fetched %s from %s", record.ref, fetcher.name)
            return True
        except (SourceUnavailable, BlockNotFound) as exc:
            log.debug("%s: %s", fetcher.name, exc)
            reasons.append(f"{fetcher.name}: not available")
        except (CidMismatch, ChecksumMismatch) as exc:
            log.error("%s", exc)
            detail = exc.detail if isinstance(exc, ChecksumMismatch) else "CID mismatch"
            reasons.append(f"{fetcher.name}: wrong bytes ({detail})")
        except RemoteError as exc:
            log.warning("%s: %s", fetcher.name, exc)
            reasons.append(f"{fetcher.name}: {exc.reason}")
        except StorageWriteError:
            raise
        except OSError as exc:
            raise StorageWriteError(str(dest), exc.strerror or str(exc)) from exc
        except (StorageError, RegistryError) as exc:
            reasons.append(f"{fetcher.name}: {exc}")
        finally:
            unlink_quietly(tmp)
        return False

    @staticmethod
    def _advance(bar: Progress | None, label: str, record: ArtifactRecord) -> Progressed:
        if bar is None:
            return None
        task = bar.add_task(label, total=record.size)
        return lambda n: bar.advance(task, n)

    def _verify(self, record: ArtifactRecord, tmp: Path, source: str, bar: Progress | None) -> None:
        size = tmp.stat().st_size
        if size != record.size:
            raise ChecksumMismatch(record.ref, source, f"size {size}, expected {record.size}")
        advance = None
        if bar is not None:
            task = bar.add_task(f"verify {record.id}@{record.version}", total=record.size)
            advance = lambda n: bar.advance(task, n)  # noqa: E731 - tiny closure
        digest = file_sha256(tmp, advance)
        if digest != record.sha256:
            raise ChecksumMismatch(record.ref, source, f"sha256 {digest[:16]}...")

    def _cache(self, fetcher: ArtifactFetcher, dest: Path, record: ArtifactRecord) -> None:
        if self.cache is None or isinstance(fetcher, BlockstoreFetcher):
            return
        try:
            cid = self.cache.add_file(dest, cid_version=parse_cid(record.cid).version)
            if cid != record.cid:
                self.cache.unpin(cid)
        except StorageError as exc:
            log.warning("could not cache %s in the local blockstore: %s", record.ref, exc)

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Progress | None]:
        if not self.progress:
            yield None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
        with Progress(*columns, transient=True) as bar:
            yield bar


def default_fetchers(
    *,
    blockstore: Blockstore,
    ipfs_url: str | None = None,
    gateway_url: str | None = None,
    use_hugging_face: bool = True,
    timeout: float = 30.0,
) -> list[ArtifactFetcher]:
    """The standard source order: local blockstore, Kubo, HTTP gateway, Hugging Face."""
    fetchers: list[ArtifactFetcher] = [BlockstoreFetcher(blockstore)]
    if ipfs_url:
        fetchers.append(IpfsFetcher(KuboClient(ipfs_url, timeout=timeout), f"Kubo at {ipfs_url}"))
    if gateway_url:
        client = KuboClient.gateway(gateway_url, timeout=timeout)
        fetchers.append(IpfsFetcher(client, f"gateway {gateway_url}"))
    if use_hugging_face:
        fetchers.append(HuggingFaceFetcher(timeout=timeout))
    return fetchers
