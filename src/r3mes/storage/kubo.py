"""A client for a real IPFS node (Kubo) over its HTTP RPC API, with a gateway read fallback.

Every call has a timeout; network errors and 5xx answers are retried with exponential backoff,
4xx answers are not. Everything read is verified against its CID before it is returned or
renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import httpx

from r3mes.storage.errors import CidMismatch, RemoteError, StorageError, StorageWriteError
from r3mes.storage.multiformats import parse_cid
from r3mes.storage.unixfs import DagParams, build_dag, compute_cid, root_of
from r3mes.storage.verify import StreamVerifier

log = logging.getLogger(__name__)
T = TypeVar("T")
Opener = Callable[[], AbstractContextManager[httpx.Response]]
DEFAULT_MAX_SIZE = 8 * 1024**3


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient failures (network errors, 5xx)."""

    attempts: int = 4
    """Total tries, the first included."""
    base_delay: float = 0.25
    """Seconds before the second try; doubles each time."""
    max_delay: float = 8.0
    """Upper bound for one wait."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("attempts >= 1 and non-negative delays required")

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay, self.base_delay * (2**attempt)))


class _Transient(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def with_retries(
    action: Callable[[], T], *, policy: RetryPolicy, what: str, sleep: Callable[[float], None]
) -> T:
    """Run `action`; retry on httpx transport errors and `_Transient` (5xx) only."""
    last = ""
    for attempt in range(policy.attempts):
        try:
            return action()
        except (httpx.TransportError, _Transient) as exc:
            last = str(exc) or type(exc).__name__
            if attempt + 1 < policy.attempts:
                wait = policy.delay(attempt)
                log.warning("%s failed (%s); retrying in %.2fs", what, last, wait)
                sleep(wait)
    raise RemoteError(what, f"gave up after {policy.attempts} tries: {last}")


def _check_status(response: httpx.Response, url: str) -> None:
    if response.status_code >= 500:
        raise _Transient(f"HTTP {response.status_code}")
    if response.status_code >= 400:
        response.read()
        raise RemoteError(url, f"HTTP {response.status_code}: {response.text[:200]}")


class KuboClient:
    """`ContentStore` backed by a Kubo node; reads can fall back to an HTTP gateway."""

    def __init__(
        self,
        api_url: str,
        *,
        gateway_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        use_api_for_reads: bool = True,
    ) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise StorageError(f"IPFS API URL {api_url!r} must start with http:// or https://")
        self.api_url = api_url.rstrip("/")
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._use_api_for_reads = use_api_for_reads
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False)

    @classmethod
    def gateway(
        cls, url: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None
    ) -> KuboClient:
        """A read-only client for an HTTP gateway (GET /ipfs/{cid}), verified like the API."""
        return cls(url, gateway_url=url, timeout=timeout, retry=retry, use_api_for_reads=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KuboClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- ContentStore --------------------------------------------------------------

    def add_bytes(self, data: bytes, *, cid_version: int = 1, pin: bool = True) -> str:
        """Upload `data`; the node's CID must equal the one computed locally."""
        payload = bytes(data)
        expected = compute_cid(payload, cid_version=cid_version)
        return self._add(lambda: io.BytesIO(payload), expected, cid_version=cid_version, pin=pin)

    def add_file(self, path: Path, *, cid_version: int = 1, pin: bool = True) -> str:
        """Upload the file at `path` streaming (never whole in memory), CID checked locally."""
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"{path} is not a regular file; pass the path of a file to add")

        def pieces() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while piece := handle.read(1 << 20):
                    yield piece

        expected = str(root_of(build_dag(pieces(), DagParams(cid_version=cid_version))))
        return self._add(lambda: path.open("rb"), expected, cid_version=cid_version, pin=pin)

    def _add(
        self, open_body: Callable[[], IO[bytes]], expected: str, *, cid_version: int, pin: bool
    ) -> str:
        url = f"{self.api_url}/api/v0/add"
        params = {
            "cid-version": str(cid_version),
            "raw-leaves": "true" if cid_version == 1 else "false",
            "pin": "true" if pin else "false",
            "chunker": "size-262144",
        }

        def call() -> str:
            with open_body() as body:
                files = {"file": ("blob", body, "application/octet-stream")}
                response = self._http.post(url, params=params, files=files)
            _check_status(response, url)
            lines = [ln for ln in response.text.splitlines() if ln.strip()]
            if not lines:
                raise RemoteError(url, "empty answer to add")
            try:
                return str(json.loads(lines[-1])["Hash"])
            except (ValueError, KeyError, TypeError) as exc:
                raise RemoteError(url, f"unexpected answer to add: {lines[-1][:200]}") from exc

        got = with_retries(call, policy=self.retry, what=url, sleep=self._sleep)
        if got != expected:
            raise CidMismatch(expected, f"Kubo at {self.api_url}", f"node answered {got}")
        return got

    def get_bytes(self, cid: str, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
        """Verified bytes of `cid`: Kubo `cat` first, then the gateway if one is set."""
        errors: list[StorageError] = []
        for source, opener in self._read_sources(cid):
            try:
                return self._read_verified(cid, source, opener, max_size)
            except StorageError as exc:
                log.warning("reading %s from %s failed: %s", cid, source, exc)
                errors.append(exc)
        raise errors[-1]

    def cat_to_file(
        self,
        cid: str,
        dest: Path,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream `cid` into `dest` atomically; verified before the rename. `on_bytes(n)`
        reports bytes received (progress; they are not verified until the end)."""
        errors: list[StorageError] = []
        for source, opener in self._read_sources(cid):
            try:
                return self._download_verified(
                    cid, source, opener, Path(dest), max_size=max_size, on_bytes=on_bytes
                )
            except StorageError as exc:
                log.warning("fetching %s from %s failed: %s", cid, source, exc)
                errors.append(exc)
        raise errors[-1]

    def pin(self, cid: str) -> None:
        self._post_simple("pin/add", cid)

    def unpin(self, cid: str) -> None:
        self._post_simple("pin/rm", cid)

    # ---- internals -----------------------------------------------------------------

    def _post_simple(self, endpoint: str, cid: str) -> None:
        parsed = str(parse_cid(cid))
        url = f"{self.api_url}/api/v0/{endpoint}"

        def call() -> None:
            response = self._http.post(url, params={"arg": parsed})
            _check_status(response, url)

        with_retries(call, policy=self.retry, what=url, sleep=self._sleep)

    def _read_sources(self, cid: str) -> list[tuple[str, Opener]]:
        parsed = str(parse_cid(cid))
        api = f"{self.api_url}/api/v0/cat"
        sources: list[tuple[str, Opener]] = []
        if self._use_api_for_reads:
            sources.append(
                (
                    f"Kubo at {self.api_url}",
                    lambda: self._http.stream("POST", api, params={"arg": parsed}),
                )
            )
        if self.gateway_url:
            gw = f"{self.gateway_url}/ipfs/{parsed}"
            sources.append((f"gateway {self.gateway_url}", lambda: self._http.stream("GET", gw)))
        return sources

    def _read_verified(self, cid: str, source: str, opener: Opener, max_size: int) -> bytes:
        def call() -> bytes:
            verifier = StreamVerifier(parse_cid(cid), source=source, max_size=max_size)
            pieces: list[bytes] = []
            with opener() as response:
                _check_status(response, source)
                for piece in response.iter_bytes():
                    verifier.feed(piece)
                    pieces.append(piece)
            verifier.finish()
            return b"".join(pieces)

        return with_retries(call, policy=self.retry, what=source, sleep=self._sleep)

    def _download_verified(
        self,
        cid: str,
        source: str,
        opener: Opener,
        dest: Path,
        *,
        max_size: int,
        on_bytes: Callable[[int], None] | None,
    ) -> int:
        def call() -> int:
            verifier = StreamVerifier(parse_cid(cid), source=source, max_size=max_size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as handle, opener() as response:
                    _check_status(response, source)
                    for piece in response.iter_bytes():
                        verifier.feed(piece)
                        handle.write(piece)
                        if on_bytes is not None:
                            on_bytes(len(piece))
                    verifier.finish()
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, dest)
            except OSError as exc:
                raise StorageWriteError(str(dest), exc.strerror or str(exc)) from exc
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return verifier.size

        return with_retries(call, policy=self.retry, what=source, sleep=self._sleep)
