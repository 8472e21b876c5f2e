"""DownloadManager: fetch an approved artifact from the first source that has it, safely.

Sources are tried in order (local blockstore, Kubo, HTTP gateway, Hugging Face when configured).
Each attempt writes to a temp file beside the destination; the file is renamed into place only
after its size and SHA-256 match the approved record (and, for IPFS sources, after every block
matched its CID). Wrong bytes are discarded and the next source is tried; transient network
failures are retried with exponential backoff; local disk failures stop at once with a clear
error, leaving nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from r3mes.registry.errors import ChecksumMismatch, DownloadFailed
from r3mes.registry.records import ArtifactRecord
from r3mes.storage.blockstore import Blockstore
from r3mes.storage.errors import (
    BlockNotFound,
    CidMismatch,
    RemoteError,
    StorageError,
    StorageWriteError,
)
from r3mes.storage.kubo import KuboClient, RetryPolicy
from r3mes.storage.multiformats import parse_cid

log = logging.getLogger(__name__)
_HASH_PIECE = 1024 * 1024
Progressed = Callable[[int], None] | None


class SourceUnavailable(StorageError):
    """A source cannot serve this artifact at all (not configured, not installed, no copy)."""


class ArtifactFetcher(Protocol):
    """One place an artifact's file can come from."""

    name: str

    def fetch(self, record: ArtifactRecord, dest: Path, on_bytes: Progressed = None) -> None:
        """Write the artifact's bytes to `dest` (a temp path the manager owns); call
        `on_bytes(n)` as bytes arrive when the source can report progress."""
        ...


class BlockstoreFetcher:
    """The local blockstore (CID-verified)."""

    def __init__(self, store: Blockstore) -> None:
        self.store = store
        self.name = "local blockstore"

    def fetch(self, record: ArtifactRecord, dest: Path, on_bytes: Progressed = None) -> None:
        if not self.store.has(record.cid):
            raise BlockNotFound(record.cid, self.name)
        self.store.cat_to_file(record.cid, dest, max_size=record.size, on_bytes=on_bytes)


class IpfsFetcher:
    """A Kubo node or an HTTP gateway through `KuboClient` (CID-verified)."""

    def __init__(self, client: KuboClient, name: str) -> None:
        self.client = client
        self.name = name

    def fetch(self, record: ArtifactRecord, dest: Path, on_bytes: Progressed = None) -> None:
        self.client.cat_to_file(record.cid, dest, max_size=record.size, on_bytes=on_bytes)


class HuggingFaceFetcher:
    """`hf_hub_download` of `<kind>s/<id>/<version>` in the record's repo, when available."""

    def __init__(self, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.name = "Hugging Face"
        self._token = token
        self._timeout = timeout

    def fetch(self, record: ArtifactRecord, dest: Path, on_bytes: Progressed = None) -> None:
        if not record.hf_repo:
            raise SourceUnavailable(f"{record.ref} names no Hugging Face repo")
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            log.debug("huggingface_hub is not installed; skipping Hugging Face")
            raise SourceUnavailable("huggingface_hub is not installed") from None
        staging = dest.parent / f".hf-{uuid.uuid4().hex}"
        try:
            path = hf_hub_download(
                repo_id=record.hf_repo,
                filename=f"{record.kind}s/{record.id}/{record.version}",
                revision=record.hf_revision,
                local_dir=str(staging),
                token=self._token,
                etag_timeout=self._timeout,
            )
            os.replace(path, dest)
        except OSError as exc:
            raise RemoteError(f"hf://{record.hf_repo}", str(exc)) from exc
        except Exception as exc:  # huggingface_hub raises its own HTTP/repo error types
            raise RemoteError(f"hf://{record.hf_repo}", f"{type(exc).__name__}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)


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
        retry: RetryPolicy | None = None,
        progress: bool = False,
        cache: Blockstore | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.fetchers = list(fetchers)
        self.retry = retry or RetryPolicy(attempts=3)
        self.progress = progress
        self.cache = cache
        self._sleep = sleep

    def download(self, record: ArtifactRecord, dest: Path) -> Path:
        """Put the verified artifact file at `dest`; DownloadFailed when no source works."""
        dest = Path(dest)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageWriteError(str(dest.parent), exc.strerror or str(exc)) from exc
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
        for attempt in range(self.retry.attempts):
            tmp = dest.parent / f".tmp-{uuid.uuid4().hex}.part"
            try:
                fetcher.fetch(
                    record, tmp, self._advance(bar, f"{record.id} <- {fetcher.name}", record)
                )
                self._verify(record, tmp, fetcher.name, bar)
                os.replace(tmp, dest)
                log.info("fetched %s from %s", record.ref, fetcher.name)
                return True
            except (SourceUnavailable, BlockNotFound) as exc:
                log.debug("%s: %s", fetcher.name, exc)
                reasons.append(f"{fetcher.name}: not available")
                return False
            except (CidMismatch, ChecksumMismatch) as exc:
                log.error("%s", exc)
                reasons.append(f"{fetcher.name}: wrong bytes")
                return False
            except RemoteError as exc:
                reasons.append(f"{fetcher.name}: {exc.reason}")
                if attempt + 1 < self.retry.attempts:
                    self._sleep(self.retry.delay(attempt))
            except OSError as exc:
                raise StorageWriteError(str(dest), exc.strerror or str(exc)) from exc
            except StorageError as exc:
                reasons.append(f"{fetcher.name}: {exc}")
                return False
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
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
        fetchers.append(HuggingFaceFetcher())
    return fetchers
