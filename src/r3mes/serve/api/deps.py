"""FastAPI dependencies: the collaborators of one app, read from `app.state`."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from r3mes.registry.unified import UnifiedRegistry
from r3mes.serve.api.errors import ApiError
from r3mes.serve.api.metrics import ServeMetrics
from r3mes.serve.engine import ServingEngine
from r3mes.serve.router import SemanticRouter
from r3mes.serve.settings import ServerSettings


def get_engine(request: Request) -> ServingEngine:
    engine: ServingEngine = request.app.state.engine
    return engine


def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


def get_router(request: Request) -> SemanticRouter | None:
    router: SemanticRouter | None = request.app.state.router
    return router


def get_metrics(request: Request) -> ServeMetrics:
    metrics: ServeMetrics = request.app.state.metrics
    return metrics


def get_registry(request: Request) -> UnifiedRegistry | None:
    """The registry that `lora_id` adapters load through (None: not configured)."""
    registry: UnifiedRegistry | None = request.app.state.registry
    return registry


EngineDep = Annotated[ServingEngine, Depends(get_engine)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
RouterDep = Annotated[SemanticRouter | None, Depends(get_router)]
MetricsDep = Annotated[ServeMetrics, Depends(get_metrics)]
RegistryDep = Annotated[UnifiedRegistry | None, Depends(get_registry)]


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Allow the call only with `Authorization: Bearer <admin token>` (constant-time check)."""
    if settings.admin_token is None:
        raise ApiError(
            403,
            "the admin API is disabled; start the server with --admin-token or R3MES_ADMIN_TOKEN",
            type="permission_error",
            code="admin_disabled",
        )
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = settings.admin_token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise ApiError(
            401,
            "missing or wrong admin token: send 'Authorization: Bearer <admin token>'",
            type="authentication_error",
            code="invalid_admin_token",
        )


AdminDep = Annotated[None, Depends(require_admin)]
