"""Error rendering: OpenAI's shape on `/v1/...`, `{"error": {code, message}}` elsewhere.

No stack trace or exception text from an unexpected error ever reaches a client; it is
logged with the request id instead.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SqlTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from r3mes.backend.errors import BackendError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    401: ("invalid_api_key", "authentication_error"),
    403: ("forbidden", "permission_error"),
    404: ("not_found", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    413: ("payload_too_large", "invalid_request_error"),
    429: ("rate_limit_exceeded", "rate_limit_error"),
}


def error_response(
    request: Request,
    *,
    status: int,
    code: str,
    type_: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any]
    if request.url.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    else:
        body = {"error": {"code": code, "message": message}}
        if param is not None:
            body["error"]["param"] = param
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BackendError)
    async def _backend(request: Request, exc: BackendError) -> JSONResponse:
        return error_response(
            request,
            status=exc.status,
            code=exc.code,
            type_=exc.type,
            message=exc.message,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = _field(tuple(first.get("loc", ())))
        message = f"{where}: {first.get('msg', 'invalid value')}"
        return error_response(
            request,
            status=422 if not request.url.path.startswith("/v1/") else 400,
            code="invalid_request",
            type_="invalid_request_error",
            message=message,
            param=where,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, type_ = _HTTP_CODES.get(exc.status_code, ("error", "invalid_request_error"))
        return error_response(
            request,
            status=exc.status_code,
            code=code,
            type_=type_,
            message=str(exc.detail),
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(SqlTimeout)
    async def _pool_timeout(request: Request, exc: SqlTimeout) -> JSONResponse:
        # Every pooled database connection stayed busy for the pool's timeout: an overload,
        # not a bug; the client may retry (nothing was written: the transaction never began).
        log.warning("database pool exhausted on %s %s", request.method, request.url.path)
        return error_response(
            request,
            status=503,
            code="service_unavailable",
            type_="server_error",
            message="the database is busy; retry in a second",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unexpected error on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc_info=exc,
        )
        return error_response(
            request,
            status=500,
            code="internal_error",
            type_="server_error",
            message="internal error; the server logged it",
        )
