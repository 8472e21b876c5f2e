"""A small OpenAI-compatible serving node for gateway tests, on a real socket (uvicorn).

It answers like `r3mes serving start` (role chunk, one chunk per token, finish chunk, usage
chunk when asked, `[DONE]`), and can be told to misbehave: fail with 500, never answer,
answer with another model, or die in the middle of a stream. It counts what it was asked
and which streams the client abandoned.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from support.net import free_port
from support.server_thread import ServerThread

BASE = "tiny-base"
ADAPTER = "r3mes-adapter"


@dataclass
class Behaviour:
    models: tuple[str, ...] = (BASE, ADAPTER)
    words: int = 6
    """Tokens generated when max_tokens allows (one word each)."""
    token_delay_s: float = 0.0
    fail: str | None = None
    """None | "500" | "hang" | "wrong_model" | "die_after:N" (close after N tokens)."""
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    delivered_tokens: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)


def prompt_tokens(body: dict[str, Any]) -> int:
    """A deterministic prompt token count, always under the gateway's byte bound."""
    if "messages" in body:
        text = "".join(str(m.get("content", "")) for m in body["messages"])
    else:
        text = str(body.get("prompt", ""))
    return len(text.encode()) // 4 + 3


def make_app(behaviour: Behaviour) -> Starlette:
    async def models(request: Request) -> JSONResponse:
        data = [{"id": BASE, "object": "model", "owned_by": "r3mes"}]
        data += [
            {"id": m, "object": "model", "owned_by": "r3mes", "parent": BASE}
            for m in behaviour.models
            if m != BASE
        ]
        return JSONResponse({"object": "list", "data": data})

    async def complete(request: Request) -> Response:
        body = await request.json()
        behaviour.requests += 1
        behaviour.bodies.append(body)
        fail = behaviour.fail or ""
        if fail == "500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if fail == "hang":
            await asyncio.sleep(3600)
        if body["model"] not in behaviour.models:
            error = {"message": "no such model", "type": "invalid_request_error"}
            return JSONResponse({"error": {**error, "code": "model_not_found"}}, status_code=404)
        model = "someone-else" if fail == "wrong_model" else body["model"]
        chat = request.url.path.endswith("/chat/completions")
        n = min(int(body.get("max_tokens") or 16), behaviour.words)
        p = prompt_tokens(body)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        if not body.get("stream"):
            if behaviour.token_delay_s:
                await asyncio.sleep(behaviour.token_delay_s * n)
            text = "".join(f" w{i}" for i in range(n))
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            choice["finish_reason"] = "length" if n == body.get("max_tokens") else "stop"
            behaviour.completed += 1
            behaviour.delivered_tokens += n
            return JSONResponse(
                {
                    "id": ident,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": p,
                        "completion_tokens": n,
                        "total_tokens": p + n,
                    },
                }
            )
        die_after = int(fail.split(":")[1]) if fail.startswith("die_after:") else None
        options = body.get("stream_options") or {}
        usage = options.get("include_usage", False)
        continuous = usage and options.get("continuous_usage_stats", False)

        def chunk(choices: list[Any], **extra: Any) -> bytes:
            doc = {
                "id": ident,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            finished = False
            try:
                if chat:
                    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
                for i in range(n):
                    if die_after is not None and i >= die_after:
                        raise ConnectionAbortedError("told to die")
                    await asyncio.sleep(behaviour.token_delay_s)
                    piece = f" w{i}"
                    part = {"content": piece} if chat else None
                    so_far = {
                        "prompt_tokens": p,
                        "completion_tokens": i + 1,
                        "total_tokens": p + i + 1,
                    }
                    yield chunk(
                        [{"index": 0, "delta": part} if chat else {"index": 0, "text": piece}],
                        **({"usage": so_far} if continuous else {}),
                    )
                    behaviour.delivered_tokens += 1
                yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
                if usage:
                    u = {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}
                    yield chunk([], usage=u)
                yield b"data: [DONE]\n\n"
                finished = True
                behaviour.completed += 1
            finally:
                if not finished and die_after is None:
                    behaviour.cancelled += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", complete, methods=["POST"]),
            Route("/v1/completions", complete, methods=["POST"]),
        ]
    )


class Upstream:
    """One stub node on 127.0.0.1 in a thread; `stop()` and `start()` again on the same port."""

    def __init__(self, behaviour: Behaviour | None = None, port: int | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ServerThread | None = None

    def start(self) -> Upstream:
        server = ServerThread(
            make_app(self.behaviour),
            port=self.port,
            name="test-upstream",
            lifespan="off",
            timeout_graceful_shutdown=0,
        )
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop at once, dropping open connections (like a killed process)."""
        if self._server is not None:
            self._server.stop(force=True)
            self._server = None


@contextmanager
def running_upstream(behaviour: Behaviour | None = None) -> Iterator[Upstream]:
    node = Upstream(behaviour).start()
    try:
        yield node
    finally:
        node.stop()


class UpstreamProcess:
    """The stub node as its own process, so a test can SIGKILL it like a crashed node."""

    def __init__(self, *, port: int | None = None, words: int = 6, token_delay_s: float = 0.0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.words, self.token_delay_s = words, token_delay_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> UpstreamProcess:
        tests = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "support.upstream",
                str(self.port),
                str(self.words),
                str(self.token_delay_s),
            ],
            env=env,
        )
        deadline = time.monotonic() + 90  # a fresh interpreter importing uvicorn, on a busy box
        while True:
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError("stub upstream process did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def main(argv: list[str]) -> None:
    port, words, delay = int(argv[0]), int(argv[1]), float(argv[2])
    app = make_app(Behaviour(words=words, token_delay_s=delay))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main(sys.argv[1:])
