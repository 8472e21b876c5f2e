"""OpenAI's error envelope for every failure the API reports.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with a 4xx status
for the client's mistakes and 5xx for ours.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from r3mes.serve.errors import (
    AdapterLoadError,
    AdapterNotFound,
    EngineClosed,
    EngineOverloaded,
    InvalidRequest,
    RouterError,
    ServeError,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP error with OpenAI's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def envelope(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_serve_error(exc: ServeError) -> ApiError:
    """Map an engine error onto an HTTP status and OpenAI error type."""
    if isinstance(exc, AdapterNotFound):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc), param=exc.param)
    if isinstance(exc, AdapterLoadError):
        return ApiError(400, str(exc), param="lora_path", code="adapter_load_failed")
    if isinstance(exc, EngineOverloaded):
        return ApiError(429, str(exc), type="rate_limit_error", code="queue_full")
    if isinstance(exc, EngineClosed):
        return ApiError(503, str(exc), type="server_error", code="engine_stopped")
    if isinstance(exc, RouterError):
        return ApiError(500, str(exc), type="server_error", code="router_failed")
    return ApiError(500, str(exc), type="server_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "the request body is invalid", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    where = f"'{param}': " if param else ""
    return f"invalid request: {where}{msg}{more}", param


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the envelope (FastAPI's 422 becomes a 400)."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        body = envelope(exc.message, type=exc.type, param=exc.param, code=exc.code)
        return JSONResponse(body, status_code=exc.status)

    async def on_serve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        return await on_api_error(request, from_serve_error(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        body = envelope(message, type="invalid_request_error", param=param)
        return JSONResponse(body, status_code=400)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = envelope(str(exc.detail), type=kind)
        return JSONResponse(body, status_code=exc.status_code)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        body = envelope("internal server error", type="server_error")
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
