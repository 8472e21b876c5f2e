"""Running the API: `build_engine` from disk, `run_server` (blocking), `ServerThread` (tests,
nodes that embed a server beside other work).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from r3mes.serve.engine import EngineConfig, ServingEngine
from r3mes.serve.errors import InvalidRequest, ServeError
from r3mes.serve.registry_adapters import RegistryRef, load_registry_adapter
from r3mes.serve.router import SemanticRouter
from r3mes.serve.settings import ServerSettings

if TYPE_CHECKING:
    from r3mes.registry.unified import UnifiedRegistry

log = logging.getLogger(__name__)


def build_engine(
    model_dir: Path | None,
    *,
    adapters: Mapping[str, Path | RegistryRef] | None = None,
    config: EngineConfig | None = None,
    registry: UnifiedRegistry | None = None,
    embedding_dtype: str = "float32",
) -> ServingEngine:
    """Load the base model (the shipped one when `model_dir` is None) and the adapters.

    The model directory holds an HF-style checkpoint plus `tokenizer.json`. The model is
    frozen (packed ternary weights, unpacked copies cached for speed), its embedding and head
    held in `embedding_dtype` ("float32" or "bfloat16", see `load_pretrained`). An adapter is a
    PEFT directory, or a `RegistryRef` resolved through `registry`.
    """
    if registry is None and any(isinstance(a, RegistryRef) for a in (adapters or {}).values()):
        raise InvalidRequest("registry adapters need a registry (--registry-home)")
    from r3mes.model.checkpoint import load_pretrained
    from r3mes.model.tokenizer import load_tokenizer

    if model_dir is None:
        from r3mes.model.shipped import SHIPPED_MODEL_NAME, shipped_model_dir

        model_dir, name = shipped_model_dir(), SHIPPED_MODEL_NAME
    else:
        name = model_dir.resolve().name
    model = load_pretrained(model_dir, embedding_dtype=embedding_dtype)
    model.freeze_backbone()
    for _, layer in model.bit_linears():
        layer.cache_unpacked(True)
    engine = ServingEngine(model, load_tokenizer(model_dir), model_name=name, config=config)
    for adapter, source in (adapters or {}).items():
        if isinstance(source, RegistryRef):
            assert registry is not None
            load_registry_adapter(engine, name=adapter, registry=registry, ref=source)
        else:
            engine.load_adapter(adapter, source)
    return engine


class ServerThread:
    """A uvicorn server for `create_app(engine, settings)` on a background thread."""

    def __init__(
        self,
        engine: ServingEngine,
        settings: ServerSettings,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        router: SemanticRouter | None = None,
        registry: UnifiedRegistry | None = None,
        log_level: str = "warning",
    ) -> None:
        from r3mes.serve.api.app import create_app

        self.engine = engine
        app = create_app(engine, settings, router=router, registry=registry)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="r3mes-http", daemon=True)

    def start(self, timeout: float = 20.0) -> ServerThread:
        """Start the engine and the server; return once it accepts connections."""
        self.engine.start()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError("the HTTP server did not start; is the port free?")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self.engine.stop()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(
    engine: ServingEngine,
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    router: SemanticRouter | None = None,
    registry: UnifiedRegistry | None = None,
    log_level: str = "info",
) -> str | None:
    """Serve until SIGINT or SIGTERM, shut down gracefully, stop the engine, and return
    the name of the signal that asked for it (None if the server stopped by itself)."""
    from r3mes.serve.api.app import create_app

    app = create_app(engine, settings, router=router, registry=registry)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    server = _GracefulServer(config)
    engine.start()
    try:
        server.run()
    finally:
        engine.stop()
    return server.stopped_by


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, minus its re-raising of the signal after a graceful shutdown.

    uvicorn restores the default handlers and raises the captured signal again once it has
    shut down, so a clean SIGTERM shutdown ended the process with status 143. Here a
    signal only asks for the shutdown (a second one forces it) and is recorded.
    """

    stopped_by: str | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by = signal.Signals(sig).name
        if self.should_exit:
            self.force_exit = True
        else:
            self.should_exit = True
