"""Websocket fan-out: channels, a bounded queue per client, heartbeats, per-IP caps.

Publishing never waits for a client: a message is encoded once and offered to each
subscriber's queue with `put_nowait`; a client whose queue is full is dropped with close
code 4008 (its sender task is cancelled, the socket closed with a short timeout), so a
stalled reader can delay nobody else. Every client gets `{"type": "ping"}` each
`ping_interval_s` and must show life (any message, normally `{"type": "pong"}`) within three
intervals, or it is closed with 4000. The message schema is in docs/backend.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

log = logging.getLogger(__name__)

CLOSE_IDLE = 4000
CLOSE_UNAUTHORIZED = 4001
CLOSE_BAD_REQUEST = 4003
CLOSE_SLOW = 4008
CLOSE_TOO_MANY = 4029
CLOSE_TIMEOUT_S = 1.0
MAX_CLIENT_MESSAGE = 4096


def encode(kind: str, channel: str, data: Any) -> str:
    return json.dumps({"type": kind, "channel": channel, "data": data}, separators=(",", ":"))


@dataclass(eq=False)
class Client:
    """One connected socket: its channel key, queue and liveness."""

    ws: WebSocket
    ip: str
    key: str
    """Channel key: `blocks`, `network_status`, `training_metrics`, `miner_stats:<addr>`,
    `usage:<account id>`."""
    queue: asyncio.Queue[str]
    last_seen: float = field(default_factory=time.monotonic)
    dropped: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the hub drops the client (its sender may be stuck in a send)."""


class Hub:
    """Channels of connected clients (see the module docstring)."""

    def __init__(self, *, queue_size: int, max_per_ip: int, ping_interval_s: float) -> None:
        self.queue_size = queue_size
        self.max_per_ip = max_per_ip
        self.ping_interval_s = ping_interval_s
        self.channels: dict[str, set[Client]] = defaultdict(set)
        self.per_ip: dict[str, int] = defaultdict(int)
        self.dropped_slow = 0

    def subscribers(self, key: str) -> int:
        return len(self.channels.get(key, ()))

    def keys(self, prefix: str) -> list[str]:
        return [k for k, v in self.channels.items() if k.startswith(prefix) and v]

    def publish(self, key: str, text: str) -> int:
        """Offer `text` to every client of channel `key`; returns how many took it."""
        taken = 0
        for client in list(self.channels.get(key, ())):
            self._push(client, text)
            taken += not client.dropped
        return taken

    def _push(self, client: Client, text: str) -> None:
        try:
            client.queue.put_nowait(text)
        except asyncio.QueueFull:
            self._drop(client)

    def _drop(self, client: Client) -> None:
        if client.dropped:
            return
        client.dropped = True
        self.dropped_slow += 1
        self.channels[client.key].discard(client)
        client.gone.set()  # `serve` cancels the sender and closes the socket

    async def serve(
        self,
        ws: WebSocket,
        *,
        ip: str,
        key: str,
        hello: list[str],
        on_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        producer: Callable[[Callable[[str], None]], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Accept `ws` into channel `key`, send `hello`, then stream until it goes.

        `producer(push)`, if given, runs for the connection's life and sends this client
        its own messages through `push` (bounded like everything else)."""
        if self.per_ip[ip] >= self.max_per_ip:
            await refuse(ws, CLOSE_TOO_MANY, "too many connections from this address")
            return
        self.per_ip[ip] += 1
        client = Client(ws=ws, ip=ip, key=key, queue=asyncio.Queue(self.queue_size))
        tasks: set[asyncio.Task[Any]] = set()
        try:
            await ws.accept()
            for text in hello:
                client.queue.put_nowait(text)
            self.channels[key].add(client)
            sender = asyncio.create_task(self._send_loop(client))
            pinger = asyncio.create_task(self._ping_loop(client))
            receiver = asyncio.create_task(self._receive_loop(client, on_message))
            tasks.update((sender, pinger, receiver, asyncio.create_task(client.gone.wait())))
            if producer is not None:
                tasks.add(asyncio.create_task(producer(lambda text: self._push(client, text))))
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            code = CLOSE_SLOW if client.dropped else CLOSE_IDLE if pinger in done else 1000
            reason = {CLOSE_SLOW: "client too slow", CLOSE_IDLE: "no pong"}.get(code, "")
            await self._close(client, code, reason)
        finally:
            for task in tasks:  # serve itself cancelled (a shutdown): its helpers go with it
                task.cancel()
            self.channels[key].discard(client)
            if not self.channels[key]:
                self.channels.pop(key, None)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                self.per_ip.pop(ip, None)

    async def _send_loop(self, client: Client) -> None:
        while True:
            await client.ws.send_text(await client.queue.get())

    async def _ping_loop(self, client: Client) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            if time.monotonic() - client.last_seen > 3 * self.ping_interval_s:
                return
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(json.dumps({"type": "ping", "ts": int(time.time() * 1000)}))

    async def _receive_loop(
        self,
        client: Client,
        on_message: Callable[[dict[str, Any]], Awaitable[None]] | None,
    ) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                text = await client.ws.receive_text()
                client.last_seen = time.monotonic()
                doc = _parse(text)
                if doc.get("type") == "ping":
                    with contextlib.suppress(asyncio.QueueFull):
                        client.queue.put_nowait(json.dumps({"type": "pong"}))
                elif on_message is not None and doc.get("type") not in ("pong", None):
                    await on_message(doc)

    async def _close(self, client: Client, code: int, reason: str) -> None:
        if client.ws.application_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.ws.close(code=code, reason=reason), CLOSE_TIMEOUT_S)


async def refuse(ws: WebSocket, code: int, reason: str) -> None:
    """Accept, then close with `code`: a close before accepting reaches a browser as a bare
    HTTP 403, and the client could not tell why."""
    await ws.accept()
    await ws.close(code=code, reason=reason[:120])


def _parse(text: str) -> dict[str, Any]:
    if len(text) > MAX_CLIENT_MESSAGE:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
