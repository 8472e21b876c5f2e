"""An ASGI app served by uvicorn on 127.0.0.1 from a named thread, for in-process tests.

`stop()` does not give up quietly: it asks for a graceful shutdown (the app's lifespan runs,
so a backend's runtime cancels its workers, the chain follower among them), escalates to a
forced exit if that takes too long, and raises if the thread still runs. A server thread
that outlived its test once kept a chain follower polling a devnet that was gone, and its
warnings landed in a later test; `tests/conftest.py` also fails a module that leaves one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
"""Generous on purpose: CI runs the suite on a loaded 2-core box."""


class ServerThread:
    """`app` on 127.0.0.1:`port`, run by uvicorn in a daemon thread named `name`."""

    def __init__(self, app: Any, *, port: int, name: str, **config: Any) -> None:
        self.port = port
        self.name = name
        options: dict[str, Any] = {"host": "127.0.0.1", "port": port, "log_level": "warning"}
        options.update(config)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Run the server; return once it listens (RuntimeError, and stopped, if it does not)."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"{self.name} exited before listening on port {self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen within {timeout_s:.0f} s")
            time.sleep(0.02)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, *, force: bool = False) -> None:
        """Shut down (gracefully unless `force`) and make sure the thread has ended."""
        if not self.thread.is_alive():
            return
        self.server.should_exit = True
        self.server.force_exit = force
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True  # skip waiting for connections and tasks
            self.thread.join(15)
        if self.thread.is_alive():
            raise RuntimeError(f"{self.name} (port {self.port}) did not stop")
