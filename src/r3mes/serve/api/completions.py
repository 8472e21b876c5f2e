"""Running one completion for the API: model resolution, prompt, streaming or not.

Chat and text completions differ only in how the prompt is built and how a choice is
shaped (`message`/`delta` versus `text`); `Completion` holds that difference.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse, StreamingResponse

from r3mes.serve.api.errors import ApiError, busy
from r3mes.serve.api.metrics import ServeMetrics
from r3mes.serve.api.schemas import SamplingFields
from r3mes.serve.api.streaming import SSE_DONE, EventStream, sse
from r3mes.serve.engine import RESERVED_AUTO, ServingEngine
from r3mes.serve.errors import InvalidRequest
from r3mes.serve.router import RouteDecision, SemanticRouter
from r3mes.serve.sampling import SamplingParams
from r3mes.serve.settings import ServerSettings
from r3mes.serve.types import EngineEvent, FinishEvent, GenerationRequest, TokenEvent

AUTO_MODEL = RESERVED_AUTO


@dataclass(frozen=True)
class Completion:
    """One resolved request, ready to run."""

    kind: Literal["chat", "text"]
    model: str
    """The name reported back: the base model's or the adapter's (also after routing)."""
    request: GenerationRequest
    include_usage: bool
    id: str
    created: int
    continuous_usage: bool = False
    """Every content chunk carries the usage so far (`stream_options.continuous_usage_stats`)."""

    @property
    def object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    def choice(self, text: str, finish: str | None, *, chunk: bool, first: bool = False) -> Any:
        if self.kind == "text":
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if not chunk:
            message = {"role": "assistant", "content": text}
            return {"index": 0, "message": message, "finish_reason": finish}
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        if text or first:
            delta["content"] = text
        return {"index": 0, "delta": delta, "finish_reason": finish}

    def envelope(self, choices: list[Any], *, chunk: bool) -> dict[str, Any]:
        kind = f"{self.object}.chunk" if chunk and self.kind == "chat" else self.object
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


@dataclass(frozen=True)
class Resolved:
    """Where a request goes, and why when the router chose."""

    adapter: str | None
    """The adapter to run, or None for the base model."""
    model: str
    """The name reported back: the base model's or the adapter's."""
    route: RouteDecision | None = None
    """The router's decision when the request asked for `auto`."""

    def headers(self) -> dict[str, str]:
        """Response headers that carry the router's decision (none without `auto`).

        `x-r3mes-route`: the best-scoring route; `x-r3mes-route-score`: its cosine score;
        `x-r3mes-route-fallback`: "true" when the request went to the base model anyway
        (score below the route's threshold, or its adapter not loaded).
        """
        if self.route is None or self.route.route is None:
            return {}
        return {
            "x-r3mes-route": self.route.route,
            "x-r3mes-route-score": f"{self.route.score:.4f}",
            "x-r3mes-route-fallback": "true" if self.adapter is None else "false",
        }


async def resolve_adapter(
    *,
    model: str,
    engine: ServingEngine,
    router: SemanticRouter | None,
    route_text: str,
    param: str,
) -> Resolved:
    """Resolve `model` to the base model, an adapter, or the router's choice.

    `param` names the request field `route_text` came from, for error messages.
    """
    if model == engine.model_name:
        return Resolved(adapter=None, model=model)
    if model == AUTO_MODEL:
        if router is None:
            raise ApiError(
                400,
                "model 'auto' needs the semantic router; start the server with --routes FILE",
                param="model",
                code="router_disabled",
            )
        try:
            decision = await asyncio.to_thread(router.route, route_text)
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc), param=param) from exc
        if decision.adapter is None or decision.adapter not in engine.adapters.names():
            return Resolved(adapter=None, model=engine.model_name, route=decision)
        return Resolved(adapter=decision.adapter, model=decision.adapter, route=decision)
    if model not in engine.adapters.names():
        raise engine.model_not_found(model, router=router is not None)
    return Resolved(adapter=model, model=model)


async def encode_prompt(engine: ServingEngine, text: str, *, param: str) -> tuple[int, ...]:
    """Tokenise off the event loop and check the length against the model's context.

    `param` names the request field the prompt came from (`messages` or `prompt`).
    """
    ids = await asyncio.to_thread(engine.encode_prompt, text)
    if len(ids) >= engine.max_model_len:
        raise InvalidRequest(
            f"the prompt has {len(ids)} tokens; this model takes at most "
            f"{engine.max_model_len - 1} (prompt plus completion: {engine.max_model_len})",
            param=param,
        )
    return ids


def sampling_params(
    body: SamplingFields,
    *,
    max_tokens: int | None,
    settings: ServerSettings,
    extra_stop: tuple[str, ...] = (),
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens or settings.default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_strings() + extra_stop,
        ignore_eos=body.ignore_eos,
    )


def usage(event: FinishEvent) -> dict[str, int]:
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.prompt_tokens + event.completion_tokens,
    }


def new_completion(
    kind: Literal["chat", "text"],
    *,
    model: str,
    request: GenerationRequest,
    include_usage: bool,
    continuous_usage: bool = False,
) -> Completion:
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return Completion(
        kind=kind,
        model=model,
        request=request,
        include_usage=include_usage,
        id=f"{prefix}-{uuid.uuid4().hex}",
        created=int(time.time()),
        continuous_usage=continuous_usage,
    )


class Run:
    """Submits a completion and records its metrics as events arrive."""

    def __init__(
        self, completion: Completion, *, engine: ServingEngine, metrics: ServeMetrics
    ) -> None:
        self.completion = completion
        self.metrics = metrics
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.stream = EventStream(engine, completion.request, on_abandon=self._abandoned)

    def _abandoned(self) -> None:
        """The client left (disconnect, timeout): the engine cancels the request."""
        self.metrics.requests.labels(finish_reason="cancelled").inc()

    def observe(self, event: TokenEvent | FinishEvent) -> None:
        now = time.monotonic()
        if isinstance(event, TokenEvent):
            self.metrics.generated.inc()
            if self.first_token is None:
                self.first_token = now
                self.metrics.ttft.observe(now - self.started)
            return
        self.metrics.requests.labels(finish_reason=event.reason).inc()
        elapsed = now - self.started
        if event.completion_tokens and elapsed > 0:
            self.metrics.tokens_per_second.observe(event.completion_tokens / elapsed)


async def respond(
    run: Run,
    *,
    stream: bool,
    timeout_s: float,
    is_disconnected: Callable[[], Awaitable[bool]],
    headers: dict[str, str],
) -> JSONResponse | StreamingResponse:
    """Answer with one JSON body or an SSE stream ending in `data: [DONE]`.

    A stream opens only once the request is admitted (its first event), so a request the
    server refuses still gets its HTTP status (429 with Retry-After), not a broken stream.
    """
    deadline = time.monotonic() + timeout_s
    events = run.stream.events(is_disconnected)
    try:
        async with asyncio.timeout(timeout_s):
            if not stream:
                response = await _collect(run, events)
                response.headers.update(headers)
                return response
            first = await anext(events, None)
    except TimeoutError as exc:
        await events.aclose()  # cancels the request
        message = f"the request ran longer than {timeout_s:.0f} s"
        raise ApiError(504, message, type="timeout") from exc
    if first is None:
        raise ApiError(499, "the client disconnected", code="client_closed")
    if isinstance(first, FinishEvent) and first.reason == "rejected":
        raise _rejected(first)
    return StreamingResponse(
        _sse_body(run, first, events, deadline),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )


def _rejected(event: FinishEvent) -> ApiError:
    return busy(event.error or "the server is busy", retry_after_s=event.retry_after_s or 1)


async def _collect(run: Run, events: AsyncIterator[EngineEvent]) -> JSONResponse:
    parts: list[str] = []
    c = run.completion
    async for event in events:
        run.observe(event)
        if isinstance(event, TokenEvent):
            parts.append(event.text)
            continue
        if event.reason == "rejected":
            raise _rejected(event)
        if event.reason == "error":
            raise ApiError(500, event.error or "generation failed", type="server_error")
        parts.append(event.text)
        finish = "length" if event.reason == "length" else "stop"
        body = c.envelope([c.choice("".join(parts), finish, chunk=False)], chunk=False)
        body["usage"] = usage(event)
        return JSONResponse(body)
    raise ApiError(499, "the client disconnected", code="client_closed")


async def _sse_body(
    run: Run, first: EngineEvent, events: AsyncGenerator[EngineEvent], deadline: float
) -> AsyncIterator[str]:
    c = run.completion
    if c.kind == "chat":
        yield sse(c.envelope([c.choice("", None, chunk=True, first=True)], chunk=True))
    generated = 0

    def emit(event: EngineEvent) -> list[dict[str, Any]]:
        nonlocal generated
        run.observe(event)
        if isinstance(event, TokenEvent):
            generated += 1
        chunks = _chunks(c, event)
        if c.continuous_usage:
            for chunk in chunks:
                if chunk.get("choices") and "usage" not in chunk:
                    chunk["usage"] = _usage_so_far(c, event, generated)
        return chunks

    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            for chunk in emit(first):
                yield sse(chunk)
            async for event in events:
                for chunk in emit(event):
                    yield sse(chunk)
    except TimeoutError:
        await events.aclose()  # cancels the request
        error = {"message": "the request timed out", "type": "timeout", "param": None}
        yield sse({"error": {**error, "code": None}})
    yield SSE_DONE


def _usage_so_far(c: Completion, event: EngineEvent, generated: int) -> dict[str, int]:
    """Usage up to and including this chunk (the finish event's own count when it is one)."""
    if isinstance(event, FinishEvent):
        return usage(event)
    prompt = len(c.request.prompt_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
    }


def _loop_time(deadline: float) -> float:
    """A `time.monotonic()` deadline on the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _chunks(c: Completion, event: TokenEvent | FinishEvent) -> list[dict[str, Any]]:
    if isinstance(event, TokenEvent):
        if not event.text:
            return []
        return [c.envelope([c.choice(event.text, None, chunk=True)], chunk=True)]
    if event.reason == "error":
        message = event.error or "generation failed"
        return [
            {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        ]
    finish = "length" if event.reason == "length" else "stop"
    chunks = [c.envelope([c.choice(event.text, finish, chunk=True)], chunk=True)]
    if c.include_usage:
        tail = c.envelope([], chunk=True)
        tail["usage"] = usage(event)
        chunks.append(tail)
    return chunks
