"""`create_app(settings)`: the backend's FastAPI application. Nothing is built at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from r3mes import __version__
from r3mes.backend.api.errors import install_error_handlers
from r3mes.backend.api.main import api_router
from r3mes.backend.api.middleware import BodyLimit, SecurityHeaders, install_log_redaction
from r3mes.backend.db.migrate import migrate
from r3mes.backend.runtime import Runtime
from r3mes.backend.services.workers import workers
from r3mes.backend.settings import BackendSettings

log = logging.getLogger(__name__)


def create_app(settings: BackendSettings, *, start_workers: bool = True) -> FastAPI:
    """The app for `settings`; its lifespan opens the database, migrates and starts workers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.open(settings)
        try:
            if settings.migrate_on_start:
                await migrate(runtime.db)
            app.state.runtime = runtime
            if start_workers:
                for name, work in workers(runtime):
                    runtime.spawn(name, work)
            yield
        finally:
            await runtime.close()

    install_log_redaction()
    app = FastAPI(
        title="R3MES backend",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE", "PATCH"],
            allow_headers=[
                "authorization",
                "content-type",
                "x-api-key",
                "idempotency-key",
                "x-csrf-token",
            ],
        )
    return app
