"""The proxy to serving nodes: open a request on the best node, retry before the first byte,
relay a stream while tallying what it delivered.

`Gateway.open` tries up to `attempts` nodes: a node that cannot be reached, times out before
its first byte, answers 5xx/429, or answers with a model other than the one asked for is a
failed attempt (counted by the circuit breaker) and the next node is tried. The client has
received nothing yet, so nothing is billed twice. Once the first byte is out, a failing node
ends the stream with an OpenAI-shaped error event and the request pays for what arrived.

`relay` yields the SSE events to the client as they come, drops the usage chunk the gateway
asked for when the client did not, and counts content chunks so a stream cut short (client
gone, node gone) can be billed for the tokens it delivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from r3mes.backend.errors import BackendError, Unavailable
from r3mes.backend.services.billing import Usage, usage_from
from r3mes.backend.services.metrics import GatewayMetrics
from r3mes.backend.services.nodes import AUTO_MODEL, ModelRef, NodeDirectory, NodeState

log = logging.getLogger(__name__)

PASSED_HEADERS = ("x-r3mes-route", "x-r3mes-route-score", "x-r3mes-route-fallback")
"""The node's router headers passed to the client (who chose the adapter, and how surely)."""
VERSION_HEADER = "x-r3mes-adapter-version"
MAX_EVENT_BYTES = 1 << 20
SSE_DONE = b"data: [DONE]"


class NodeFailure(Exception):
    """An attempt at one node failed before its first byte reached the client."""

    def __init__(self, reason: str, *, trips: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.trips = trips
        """Whether it counts toward the circuit breaker (a busy node's 429 does not)."""


class UpstreamRefused(BackendError):
    """The node refused the request itself (400, 413, 422): passed to the client as is."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the serving node refused the request ({status})")
        self.status = status
        self.body = body


class SseReader:
    """Server-sent events, one at a time, from a streamed httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_raw()
        self._buffer = b""
        self.ended = False

    async def next_event(self) -> bytes | None:
        """The next event's bytes (without the blank line), or None at the end."""
        while True:
            cut = self._buffer.find(b"\n\n")
            if cut >= 0:
                event, self._buffer = self._buffer[:cut], self._buffer[cut + 2 :]
                if event.strip():
                    return event.strip(b"\r\n")
                continue
            if self.ended:
                rest, self._buffer = self._buffer.strip(), b""
                return rest or None
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self.ended = True
                continue
            self._buffer += chunk.replace(b"\r\n", b"\n")
            if len(self._buffer) > MAX_EVENT_BYTES:
                raise httpx.DecodingError("server-sent event larger than 1 MiB")


def event_json(event: bytes) -> Any:
    """The JSON object of a `data: {...}` event (None for anything else)."""
    if not event.startswith(b"data:") or event == SSE_DONE:
        return None
    try:
        return json.loads(event[5:])
    except ValueError:
        return None


@dataclass
class Opened:
    """A request a node accepted: its response, and the first event (stream) or body."""

    node: NodeState
    response: httpx.Response
    first: bytes
    reader: SseReader | None
    started: float
    first_byte_s: float
    attempts: int
    model: str
    """The model the node says it ran."""
    headers: dict[str, str] = field(default_factory=dict)
    """Headers for the client: `x-r3mes-node` and the router's."""


@dataclass
class Tally:
    """What a relayed stream delivered."""

    chunks: int = 0
    """Content chunks sent (one per generated token on R3MES nodes)."""
    usage: Usage | None = None
    done: bool = False
    error: str | None = None

    def delivered(self) -> Usage:
        """Usage to bill: the node's report when it came, else the chunks delivered."""
        if self.usage is None:
            return Usage(0, self.chunks)
        if self.done:
            return self.usage  # the node's final count
        # cut short: the last usage so far may lag the chunks already relayed
        return Usage(self.usage.prompt_tokens, max(self.usage.completion_tokens, self.chunks))


class Gateway:
    """Sends requests to serving nodes (see the module docstring)."""

    def __init__(
        self,
        *,
        directory: NodeDirectory,
        http: httpx.AsyncClient,
        metrics: GatewayMetrics,
        attempts: int,
        first_byte_timeout_s: float,
        timeout_s: float,
    ) -> None:
        self.directory = directory
        self.http = http
        self.metrics = metrics
        self.attempts = attempts
        self.first_byte_timeout_s = first_byte_timeout_s
        self.timeout_s = timeout_s

    async def open(self, *, path: str, payload: bytes, model: ModelRef, stream: bool) -> Opened:
        """Start the request on the least loaded node holding `model`, failing over."""
        tried: set[str] = set()
        started = time.monotonic()
        last = "no serving node holds it"
        for attempt in range(1, self.attempts + 1):
            node = self.directory.pick(model, exclude=tried)
            if node is None:
                break
            tried.add(node.key)
            node.in_flight += 1
            try:
                opened = await self._attempt(node, path, payload, model, stream)
            except NodeFailure as exc:
                node.in_flight -= 1
                last = f"{node.key}: {exc.reason}"
                self.metrics.upstream_failures.labels(node=node.key, reason=exc.reason).inc()
                if exc.trips:
                    self.directory.failed(node, exc.reason)
                log.info("attempt %d at %s failed: %s", attempt, node.key, exc.reason)
                continue
            except BaseException:
                node.in_flight -= 1
                raise
            opened.started, opened.attempts = started, attempt
            return opened
        raise Unavailable(
            f"no serving node could serve model {str(model)!r} now ({last}); retry shortly",
            headers={"retry-after": "1"},
        )

    async def _attempt(
        self, node: NodeState, path: str, payload: bytes, model: ModelRef, stream: bool
    ) -> Opened:
        request = self.http.build_request(
            "POST",
            f"{node.endpoint}{path}",
            content=payload,
            headers={"content-type": "application/json", "accept-encoding": "identity"},
            timeout=httpx.Timeout(self.timeout_s, connect=3.0, read=self.first_byte_timeout_s)
            if stream
            else httpx.Timeout(self.timeout_s, connect=3.0),
        )
        t0 = time.monotonic()
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(self.first_byte_timeout_s if stream else self.timeout_s):
                response = await self.http.send(request, stream=True)
                if response.status_code != 200:
                    await self._refused(response)
                reader = SseReader(response) if stream else None
                first = await reader.next_event() if reader else await response.aread()
            if not first:
                raise NodeFailure("empty answer")
            answered = self._check_model(node, model, first, response, stream=stream)
        except NodeFailure:
            if response is not None:
                await response.aclose()
            raise
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            if response is not None:
                await response.aclose()
            raise NodeFailure(type(exc).__name__) from exc
        except BaseException:
            if response is not None:
                await response.aclose()
            raise
        headers = {"x-r3mes-node": node.key}
        headers.update({h: response.headers[h] for h in PASSED_HEADERS if h in response.headers})
        return Opened(
            node=node,
            response=response,
            first=first,
            reader=reader,
            started=t0,
            first_byte_s=time.monotonic() - t0,
            attempts=1,
            model=answered,
            headers=headers,
        )

    async def _refused(self, response: httpx.Response) -> None:
        status = response.status_code
        body = await response.aread()
        await response.aclose()
        if status == 429:
            raise NodeFailure("busy", trips=False)
        if status >= 500:
            raise NodeFailure(f"http {status}")
        if status == 404:
            raise NodeFailure("model missing on node")  # its model list was stale
        if status in (400, 413, 422):
            raise UpstreamRefused(status, body)
        raise NodeFailure(f"http {status}")

    def _check_model(
        self,
        node: NodeState,
        model: ModelRef,
        first: bytes,
        response: httpx.Response,
        *,
        stream: bool,
    ) -> str:
        doc = event_json(first) if stream else _loads(first)
        if not isinstance(doc, dict) or "error" in doc:
            raise NodeFailure("error answer" if isinstance(doc, dict) else "malformed answer")
        answered = str(doc.get("model", ""))
        if model.name == AUTO_MODEL:
            ok = answered in node.models
        else:
            ok = answered == model.name
        version = response.headers.get(VERSION_HEADER)
        if ok and model.version is not None and version is not None:
            ok = version == str(model.version)
        if not ok:
            raise NodeFailure("answered with another model")
        return answered

    def finished(self, opened: Opened, *, failed: str | None) -> None:
        """The request left the node: free its slot and tell the breaker how it went."""
        opened.node.in_flight -= 1
        if failed is None:
            self.directory.succeeded(opened.node)
        else:
            self.metrics.upstream_failures.labels(node=opened.node.key, reason=failed).inc()
            self.directory.failed(opened.node, failed)


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def error_event(message: str, *, code: str) -> bytes:
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


async def relay(
    gateway: Gateway,
    opened: Opened,
    *,
    client_wants_usage: bool,
    deadline_s: float,
    settle: Callable[[Tally, str], Awaitable[None]],
) -> AsyncGenerator[bytes, None]:
    """Yield the stream's events to the client; settle with the tally when it ends.

    `settle(tally, status)` runs exactly once, shielded from cancellation, with status
    "ok", "error" (the node failed midway) or "cancelled" (the client left).
    """
    tally = Tally()
    status = "cancelled"
    node_failure: str | None = None
    reader = opened.reader
    assert reader is not None
    try:
        event: bytes | None = opened.first
        async with asyncio.timeout(deadline_s):
            while event is not None:
                out = _observe(tally, event, client_wants_usage)
                if out is not None:
                    yield out
                if tally.done:
                    break
                event = await reader.next_event()
        if tally.done:
            status = "ok" if tally.error is None else "error"
        else:
            node_failure = "stream ended early"
            status = "error"
            yield error_event("the serving node ended the stream early", code="upstream_error")
            yield SSE_DONE + b"\n\n"
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        node_failure = type(exc).__name__
        status = "error"
        yield error_event("the serving node failed while streaming", code="upstream_error")
        yield SSE_DONE + b"\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            await opened.response.aclose()
            gateway.finished(opened, failed=node_failure)
            await settle(tally, status)


def _observe(tally: Tally, event: bytes, client_wants_usage: bool) -> bytes | None:
    """Update the tally with one event; what to send the client (None: nothing)."""
    if event == SSE_DONE:
        tally.done = True
        return event + b"\n\n"
    doc = event_json(event)
    if isinstance(doc, dict):
        if "error" in doc:
            error = doc["error"]
            tally.error = str(error.get("message", "error")) if isinstance(error, dict) else "error"
        usage = usage_from(doc)
        choices = doc.get("choices")
        if isinstance(choices, list) and choices and _has_content(choices[0]):
            tally.chunks += 1
        if usage is not None:
            tally.usage = usage
            if not choices and not client_wants_usage:
                return None
            if choices:
                # usage so far on a content chunk (continuous_usage_stats, asked of the
                # node for billing): the client gets usage once, at the end, as OpenAI's
                del doc["usage"]
                return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
    return event + b"\n\n"


def _has_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content"))
    return bool(choice.get("text"))


class Relay:
    """`relay` as the body of a `RelayResponse`, closable whether or not it ever started:
    a response never sent (the client left before it began) still frees the node and
    settles the bill."""

    def __init__(
        self,
        gateway: Gateway,
        opened: Opened,
        *,
        client_wants_usage: bool,
        deadline_s: float,
        settle: Callable[[Tally, str], Awaitable[None]],
    ) -> None:
        self.gateway, self.opened, self.settle = gateway, opened, settle
        self.started = False
        self._events = relay(
            gateway,
            opened,
            client_wants_usage=client_wants_usage,
            deadline_s=deadline_s,
            settle=settle,
        )

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        self.started = True
        return await anext(self._events)

    async def aclose(self) -> None:
        if self.started:
            await self._events.aclose()
            return
        self.started = True  # closed once
        await self.opened.response.aclose()
        self.gateway.finished(self.opened, failed=None)
        await self.settle(Tally(), "cancelled")


class RelayResponse(StreamingResponse):
    """A streaming response that notices a client leaving even while the node is silent.

    Starlette watches for `http.disconnect` only on older ASGI servers; here it is always
    watched, and the body iterator is cancelled as soon as the client is gone, which closes
    the upstream request (the node cancels the generation) and settles the bill.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            # A body iterator stopped at a `yield` is closed here, not by the garbage
            # collector some time later: its `finally` settles the bill now.
            with anyio.CancelScope(shield=True):
                close = getattr(self.body_iterator, "aclose", None)
                if close is not None:
                    await close()
