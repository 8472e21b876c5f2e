"""From the engine thread to asyncio: per-request event queues and SSE framing.

The engine calls a request's sink on its own thread; the sink hands each event to the
event loop with `loop.call_soon_threadsafe`, so the loop never waits on the engine. If the
consumer goes away (client disconnect, cancelled task) the request is cancelled and its
batch slot freed at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from r3mes.serve.engine import ServingEngine
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest, RequestHandle

DISCONNECT_POLL_S = 0.5


class EventStream:
    """Async iterator over one request's engine events; cancels the request when closed."""

    def __init__(
        self,
        engine: ServingEngine,
        request: GenerationRequest,
        *,
        on_abandon: Callable[[], None] | None = None,
    ) -> None:
        """Submit `request`; `on_abandon` runs if the consumer leaves before the end."""
        loop = asyncio.get_running_loop()
        self._on_abandon = on_abandon
        self._queue: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def sink(event: EngineEvent) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, event)

        self.handle: RequestHandle = engine.submit(request, sink)
        self.finished = False

    async def events(
        self, is_disconnected: Callable[[], Any] | None = None
    ) -> AsyncGenerator[EngineEvent]:
        """Yield events until the finish event; cancel the request on early exit."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self._queue.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if is_disconnected is not None and await is_disconnected():
                        return
                    continue
                if isinstance(event, FinishEvent):
                    # Before the yield: a consumer that stops at the finish event (closing
                    # this generator there) has not abandoned the request.
                    self.finished = True
                    yield event
                    return
                yield event
        finally:
            if not self.finished:
                self.handle.cancel()
                if self._on_abandon is not None:
                    self._on_abandon()


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
