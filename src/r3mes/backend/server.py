"""Run the backend under uvicorn until SIGINT or SIGTERM, then exit cleanly (status 0).

The pid file (`$R3MES_HOME/run/backend-NAME.pid`, the roles' convention) is written once the
socket listens, with the port actually bound (port 0 picks a free one), and removed on the
way out: `r3mes up` and `r3mes backend status` find the service through it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from r3mes.runtime.pidfile import remove_pid_file, write_pid_file

GRACEFUL_SHUTDOWN_S = 10
KEEP_ALIVE_S = 30
"""Seconds an idle client connection stays open."""


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the signal after a graceful shutdown (exit 143)."""

    stopped_by: str | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by = signal.Signals(sig).name
        if self.should_exit:
            self.force_exit = True
        else:
            self.should_exit = True


def serve(
    app: FastAPI,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    pid_file: Path | None = None,
    name: str = "backend",
    on_listening: Callable[[str], None] | None = None,
) -> str | None:
    """Serve `app`; returns the name of the signal that stopped it (None: stopped itself)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # Longer than clients' keep-alive expiry (httpx and the openai client: 5 s), so the
        # client drops an idle connection first; at equal timeouts a request sent on a
        # connection the server is closing fails as "Server disconnected" (seen under load).
        timeout_keep_alive=KEEP_ALIVE_S,
        # Explorer websocket messages are small and fan out to many clients: compressing
        # each one per client costs more CPU than the bytes it saves.
        ws_per_message_deflate=False,
    )
    server = _Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        try:
            while not server.started and not task.done():
                await asyncio.sleep(0.05)
            if server.started:
                bound = int(server.servers[0].sockets[0].getsockname()[1])
                if pid_file is not None:
                    write_pid_file(
                        pid_file,
                        role="backend",
                        name=name,
                        port=bound,
                        host=host,
                        stop_hint="r3mes down (or Ctrl-C / SIGTERM to the backend process)",
                    )
                if on_listening is not None:
                    on_listening(f"http://{host}:{bound}")
            await task
        finally:
            if pid_file is not None:
                remove_pid_file(pid_file)

    # uvicorn's own `run` would pick the event loop (uvloop when installed, as
    # uvicorn[standard] installs it); serving through `server.serve()` must pick it here.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(run())
    return server.stopped_by
