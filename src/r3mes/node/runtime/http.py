"""The small HTTP face every role service shows on 127.0.0.1.

`/health` (liveness and what the service is), `/stats` (JSON figures the role chooses)
and `/metrics` (Prometheus text from the service's own registry). Roles add routes
through `RoleService.add_routes`.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response

from r3mes.node.errors import ServiceError

if TYPE_CHECKING:
    import uvicorn

    from r3mes.node.runtime.service import RoleService


def create_app(service: RoleService) -> FastAPI:
    """Build the FastAPI app for `service` (no work at import time)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    app = FastAPI(title=f"r3mes {service.config.role} {service.config.name}", docs_url=None)
    app.state.service = service

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return service.stats()

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    service.add_routes(app)
    return app


class HttpServer:
    """uvicorn on a socket bound up front (so port 0 works), in a daemon thread."""

    def __init__(self, app: FastAPI, *, host: str, port: int) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            # listen now: clients that read the pid file early queue instead of being refused
            self._sock.listen(128)
        except OSError as exc:
            self._sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ServiceError(f"port {port} is in use; pick another --port or 0") from exc
            raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._app = app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self._app, log_config=None, log_level="warning", lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.run(sockets=[self._sock]), name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()
