"""A client for a real IPFS node (Kubo) over its HTTP RPC API, with a gateway read fallback.

Every call has a timeout, and reads take an overall deadline too. Transport errors and the
answers that mean "try again" (502, 503, 504) are retried with exponential backoff; any other
non-2xx answer is final and reported with Kubo's own message (its errors are HTTP 500 with
`{"Message", "Code", "Type": "error"}`). Redirects are refused: a subdomain gateway answers
`/ipfs/CID` with a 301, and R3MES needs a path gateway. Everything read is verified against
its CID before it is returned or renamed into place.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import httpx

from r3mes.storage.errors import CidMismatch, RemoteError, StorageError, StorageWriteError
from r3mes.storage.multiformats import parse_cid
from r3mes.storage.tempfiles import make_temp_file, unlink_quietly
from r3mes.storage.unixfs import DagParams, build_dag, compute_cid, root_of
from r3mes.storage.verify import StreamVerifier

log = logging.getLogger(__name__)
T = TypeVar("T")
Opener = Callable[[float], AbstractContextManager[httpx.Response]]
"""Opens a streamed response; the argument is the timeout (seconds) for this request."""
DEFAULT_MAX_SIZE = 8 * 1024**3
RETRY_STATUS = frozenset({502, 503, 504})
"""Answers that mean "the node or a proxy in front of it is busy or restarting"."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient failures (transport errors, HTTP 502/503/504)."""

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


def remaining(deadline: float | None) -> float | None:
    """Seconds left before `deadline` (a `time.monotonic()` value); None when unbounded."""
    return None if deadline is None else deadline - time.monotonic()


def with_retries(
    action: Callable[[], T],
    *,
    policy: RetryPolicy,
    what: str,
    sleep: Callable[[float], None],
    deadline: float | None = None,
) -> T:
    """Run `action`; retry on httpx transport errors and `_Transient` (502/503/504) only,
    never past `deadline`."""
    last = ""
    for attempt in range(policy.attempts):
        left = remaining(deadline)
        if left is not None and left <= 0:
            raise RemoteError(what, f"no answer within the deadline: {last or 'timed out'}")
        try:
            return action()
        except (httpx.TransportError, _Transient) as exc:
            last = str(exc) or type(exc).__name__
            if attempt + 1 < policy.attempts:
                wait = policy.delay(attempt)
                left = remaining(deadline)
                if left is not None and wait >= left:
                    raise RemoteError(
                        what, f"gave up at the deadline after {attempt + 1} tries: {last}"
                    ) from None
                log.warning("%s failed (%s); retrying in %.2fs", what, last, wait)
                sleep(wait)
    raise RemoteError(what, f"gave up after {policy.attempts} tries: {last}")


def _kubo_message(response: httpx.Response) -> str:
    """Kubo's error text: the JSON `Message` when there is one, else the start of the body."""
    response.read()
    try:
        payload = json.loads(response.content)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("Message"), str):
        return str(payload["Message"])[:300]
    return response.text[:200].strip()


def _check_status(response: httpx.Response, url: str) -> None:
    """Pass 2xx; raise `_Transient` for 502/503/504 and `RemoteError` for anything else."""
    code = response.status_code
    if 200 <= code < 300:
        return
    if code in RETRY_STATUS:
        raise _Transient(f"HTTP {code}")
    if 300 <= code < 400:
        location = response.headers.get("Location", "?")
        raise RemoteError(
            url,
            f"HTTP {code}: the gateway redirected to {location}; use a path gateway "
            "(one that serves http://HOST/ipfs/CID itself, e.g. http://127.0.0.1:8080), "
            "not a subdomain gateway",
            status=code,
        )
    raise RemoteError(url, f"HTTP {code}: {_kubo_message(response)}", status=code)


def _check_url(url: str, what: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise StorageError(f"{what} {url!r} must start with http:// or https://")
    return url.rstrip("/")


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
        what = "IPFS API URL" if use_api_for_reads else "IPFS gateway URL"
        self.api_url = _check_url(api_url, what)
        self.gateway_url = _check_url(gateway_url, "IPFS gateway URL") if gateway_url else None
        self.timeout = timeout
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

    def get_bytes(
        self, cid: str, *, max_size: int = DEFAULT_MAX_SIZE, deadline: float | None = None
    ) -> bytes:
        """Verified bytes of `cid`: Kubo `cat` first, then the gateway if one is set; all of
        it before `deadline` (a `time.monotonic()` value) when one is given."""
        errors: list[StorageError] = []
        for source, opener in self._read_sources(cid):
            try:
                return self._read_verified(cid, source, opener, max_size, deadline)
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
        deadline: float | None = None,
    ) -> int:
        """Stream `cid` into `dest` atomically; verified before the rename. `on_bytes(n)`
        reports bytes received (progress; they are not verified until the end). Gives up
        (RemoteError) at `deadline`, a `time.monotonic()` value, when one is given."""
        errors: list[StorageError] = []
        for source, opener in self._read_sources(cid):
            try:
                return self._download_verified(
                    cid,
                    source,
                    opener,
                    Path(dest),
                    max_size=max_size,
                    on_bytes=on_bytes,
                    deadline=deadline,
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
                    lambda t: self._http.stream("POST", api, params={"arg": parsed}, timeout=t),
                )
            )
        if self.gateway_url:
            gw = f"{self.gateway_url}/ipfs/{parsed}"
            sources.append(
                (f"gateway {self.gateway_url}", lambda t: self._http.stream("GET", gw, timeout=t))
            )
        return sources

    def _request_timeout(self, deadline: float | None, source: str) -> float:
        """This request's timeout: the client's, cut to what is left of the deadline."""
        left = remaining(deadline)
        if left is None:
            return self.timeout
        if left <= 0:
            raise RemoteError(source, "no answer within the deadline")
        return min(self.timeout, left)

    def _pieces(
        self, response: httpx.Response, source: str, deadline: float | None
    ) -> Iterator[bytes]:
        """The body in pieces; RemoteError once `deadline` passes (a trickling source).

        Kubo streams `cat` with `X-Content-Length`; a body that ends short of it (the daemon
        stopped mid-stream and closed the chunked body cleanly, reporting the error only in
        its `X-Stream-Error` trailer) is a transient failure to retry, not a CID mismatch.
        """
        declared = response.headers.get("x-content-length") or response.headers.get(
            "content-length"
        )
        received = 0
        for piece in response.iter_bytes():
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise RemoteError(source, "the transfer did not finish within the deadline")
            received += len(piece)
            yield piece
        if declared is not None and declared.isdigit() and received < int(declared):
            raise _Transient(f"the body ended after {received} of {declared} bytes")

    def _read_verified(
        self, cid: str, source: str, opener: Opener, max_size: int, deadline: float | None
    ) -> bytes:
        def call() -> bytes:
            verifier = StreamVerifier(parse_cid(cid), source=source, max_size=max_size)
            pieces: list[bytes] = []
            with opener(self._request_timeout(deadline, source)) as response:
                _check_status(response, source)
                for piece in self._pieces(response, source, deadline):
                    verifier.feed(piece)
                    pieces.append(piece)
            verifier.finish()
            return b"".join(pieces)

        return with_retries(
            call, policy=self.retry, what=source, sleep=self._sleep, deadline=deadline
        )

    def _download_verified(
        self,
        cid: str,
        source: str,
        opener: Opener,
        dest: Path,
        *,
        max_size: int,
        on_bytes: Callable[[int], None] | None,
        deadline: float | None,
    ) -> int:
        def call() -> int:
            verifier = StreamVerifier(parse_cid(cid), source=source, max_size=max_size)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = make_temp_file(dest.parent)
            except OSError as exc:
                raise StorageWriteError(str(dest), exc.strerror or str(exc)) from exc
            try:
                with (
                    os.fdopen(fd, "wb") as handle,
                    opener(self._request_timeout(deadline, source)) as response,
                ):
                    _check_status(response, source)
                    for piece in self._pieces(response, source, deadline):
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
                unlink_quietly(tmp)
            return verifier.size

        return with_retries(
            call, policy=self.retry, what=source, sleep=self._sleep, deadline=deadline
        )
