"""The gateway's HTTP/1.1 client transport to serving nodes: keep-alive connections on asyncio
protocols, responses parsed by `httptools` (llhttp, the parser uvicorn uses).

Why not httpx's default transport (httpcore): on every request and every response close its
pool walks all its connections and asks each one whether its socket became readable (a
`poll` system call, a `getpeername`, and anyio's attribute lookup per connection); with 32
connections to one node that was half of the backend's CPU per chat request. Here a request
takes the most recently used idle connection of its origin (LIFO, O(1)) and checks only
that one. httpx stays the client API (`httpx.AsyncClient(transport=UpstreamTransport())`):
requests, responses, streaming and the `httpx.HTTPError` family behave as with httpcore.

Limits: `max_connections` in use at once (more wait, up to the request's pool timeout),
`max_idle_per_origin` kept alive, an idle connection is dropped after `idle_expiry_s`
(below uvicorn's 5 s keep-alive, so the server rarely closes one under us), response headers
at most `MAX_HEADER_BYTES`, and reading pauses while a streamed body's unread part exceeds
`READ_HIGH_WATER` (a slow client slows the node, nothing piles up here). A reused connection
that the server had closed before answering anything is retried once on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

MAX_HEADER_BYTES = 64 * 1024
READ_HIGH_WATER = 1 << 20
READ_LOW_WATER = 256 * 1024

Origin = tuple[str, str, int]


class _Stale(Exception):
    """A reused keep-alive connection closed by the server before it answered anything."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its response parsed as it arrives."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.error: Exception | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None
        self.eof_body = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.idle:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response from the node: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        if self.complete or self.error is not None:
            self._wake()
            return
        if self.headers_done and self.eof_body:
            self.complete = True  # a body delimited by the end of the connection
        elif not self.received_any and self.reused:
            self.error = _Stale()
        else:
            self.error = httpx.RemoteProtocolError(
                "the node closed the connection before the response was complete"
            )
        self._wake()

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    # -- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("response headers are too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        names = {name.lower() for name, _ in self.headers}
        self.eof_body = b"content-length" not in names and b"transfer-encoding" not in names
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def on_message_complete(self) -> None:
        # asked now: once the message is complete the parser is reset for the next one
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    # -- used by the transport ---------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until the parser has news (headers, body, the end) or the read timeout."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.waiter
        except TimeoutError:
            raise httpx.ReadTimeout("the node sent nothing within the read timeout") from None
        finally:
            self.waiter = None

    def take(self) -> bytes:
        """The body received so far (and resume reading if it had been paused)."""
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.reading_paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self.reading_paused = False
        return data

    def reusable(self) -> bool:
        return self.complete and not self.closed and self.error is None and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection; the connection goes back to the pool once
    the body was read to its end (or is closed if the response is closed before that)."""

    def __init__(
        self, owner: UpstreamTransport, conn: _Connection, read_timeout: float | None
    ) -> None:
        self._owner = owner
        self._conn = conn
        self._read_timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.error is not None:
                self._release()
                raise _public(conn.error)
            if conn.complete:
                self._release()
                return
            await conn.wait(self._read_timeout)

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release(self._conn)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """See the module docstring. One per client; `aclose` closes every connection."""

    def __init__(
        self,
        *,
        max_connections: int = 1024,
        max_idle_per_origin: int = 256,
        idle_expiry_s: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_expiry_s = idle_expiry_s
        self._ssl_context = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.TransportError("the upstream transport is closed")
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"cannot send to {url.scheme!r} URLs")
        timeouts = request.extensions.get("timeout", {})
        port = url.port or (443 if url.scheme == "https" else 80)
        origin: Origin = (url.scheme, url.host, port)
        head, body = await _encode(request)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection to the node in time") from None
        try:
            conn = await self._send(origin, head, body, timeouts)
        except BaseException:
            self._slots.release()
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_Body(self, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _send(
        self, origin: Origin, head: bytes, body: bytes, timeouts: dict[str, float | None]
    ) -> _Connection:
        """Write the request on a connection; the connection once its headers arrived."""
        while True:
            conn = self._reuse(origin) or await self._connect(origin, timeouts.get("connect"))
            try:
                await self._exchange(conn, head, body, timeouts)
                return conn
            except _Stale:
                conn.close()
                continue  # the server had closed it: try a new connection
            except BaseException as exc:
                conn.close()
                if isinstance(exc, OSError):
                    raise httpx.WriteError(f"sending to the node failed: {exc}") from exc
                raise

    async def _exchange(
        self, conn: _Connection, head: bytes, body: bytes, timeouts: dict[str, float | None]
    ) -> None:
        transport = conn.transport
        assert transport is not None
        transport.write(head + body)
        if conn.writable is not None:
            try:
                async with asyncio.timeout(timeouts.get("write")):
                    await conn.writable
            except TimeoutError:
                raise httpx.WriteTimeout("the node did not take the request in time") from None
        while not conn.headers_done:
            if conn.error is not None:
                raise _public(conn.error) if not isinstance(conn.error, _Stale) else conn.error
            await conn.wait(timeouts.get("read"))

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed or now - conn.idle_since > self.idle_expiry_s:
                conn.close()
                continue
            conn.reused = True
            conn.idle = False
            conn._reset()
            return conn
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            tls = self._ssl_context or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    def _release(self, conn: _Connection) -> None:
        """The response is done with `conn`: keep it alive for the next request, or close it."""
        self._slots.release()
        idle = self._idle.setdefault(conn.origin, [])
        if self._closed or not conn.reusable() or len(idle) >= self.max_idle_per_origin:
            conn.close()
            return
        conn.idle = True
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


async def _encode(request: httpx.Request) -> tuple[bytes, bytes]:
    """The request line and headers, and the body (read whole; it is at most the backend's
    request body limit)."""
    body = await request.aread()
    target = request.url.raw_path
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        if name.lower() in (b"transfer-encoding", b"content-length"):
            continue
        lines.append(name + b": " + value)
    if body or request.method not in ("GET", "HEAD"):
        lines.append(b"content-length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n", body


def _public(error: Exception) -> Exception:
    if isinstance(error, _Stale):
        return httpx.RemoteProtocolError("the node closed the connection without answering")
    return error
