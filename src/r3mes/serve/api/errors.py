"""OpenAI's error envelope for every failure the API reports.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with a 4xx status
for the client's mistakes and 5xx for ours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from r3mes.serve.errors import (
    AdapterLoadError,
    AdapterNotFound,
    EngineClosed,
    EngineOverloaded,
    InvalidRequest,
    ModelNotFound,
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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def busy(message: str, *, retry_after_s: int) -> ApiError:
    """429 with the Retry-After header: the server refused work it has no room for now."""
    return ApiError(
        429,
        message,
        type="rate_limit_error",
        code="server_busy",
        headers={"Retry-After": str(max(1, retry_after_s))},
    )


def envelope(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_serve_error(exc: ServeError) -> ApiError:
    """Map an engine error onto an HTTP status and OpenAI error type."""
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, AdapterNotFound):
        return ApiError(404, str(exc), param="lora_name", code="adapter_not_found")
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc), param=exc.param)
    if isinstance(exc, AdapterLoadError):
        return ApiError(400, str(exc), param=exc.param, code="adapter_load_failed")
    if isinstance(exc, EngineOverloaded):
        return busy(str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, EngineClosed):
        return ApiError(503, str(exc), type="server_error", code="engine_stopped")
    if isinstance(exc, RouterError):
        return ApiError(500, str(exc), type="server_error", code="router_failed")
    return ApiError(500, str(exc), type="server_error")


def _validation_message(
    exc: RequestValidationError, *, required: Sequence[str] = ()
) -> tuple[str, str | None]:
    """A message naming the first problem and its field, without pydantic internals.

    `required` names the body's required fields, for the message about a missing body.
    """
    errors = [dict(e) for e in exc.errors()]
    if not errors:
        return "the request body is invalid", None
    first = errors[0]
    kind = str(first.get("type", ""))
    loc = _field_path(first.get("loc", ()))
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error")
        return "request body is not valid JSON" + (f" ({detail})" if detail else ""), None
    if not loc:
        fields = ", ".join(f"'{name}'" for name in required)
        want = f"a JSON object with {fields}" if fields else "a JSON object"
        if kind == "missing":
            return f"the request body is empty; send {want}", None
        if kind.endswith("_type"):
            return f"the request body must be {want}", None
        return f"invalid request: {_clean_msg(str(first.get('msg', 'invalid body')))}", None
    group = [e for e in errors if _field_path(e.get("loc", ()))[: len(loc)] == loc]
    path, problem = _describe(group, loc)
    param = ".".join(str(p) for p in path)
    rest = [_field_path(e.get("loc", ())) for e in errors if e not in group]
    others = dict.fromkeys(".".join(str(p) for p in r) or "body" for r in rest)
    more = f" (also invalid: {', '.join(repr(o) for o in others)})" if others else ""
    if problem == "Field required":
        return f"invalid request: '{param}' is required{more}", param
    return f"invalid request: '{param}': {problem}{more}", param


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})


def _field_path(loc: Sequence[object]) -> list[object]:
    """The request field of an error location: no 'body' root, no union-branch tags.

    Pydantic names the branch of a union it tried (`constrained-str`, `list[TextPart]`);
    those are not fields a client sent, so they are dropped.
    """
    parts = list(loc)[1:] if list(loc)[:1] == ["body"] else list(loc)
    return [p for p in parts if isinstance(p, int) or (isinstance(p, str) and _is_field(p))]


def _is_field(name: str) -> bool:
    return name.replace("_", "a").isalnum() and name not in _TYPE_TAGS


def _describe(group: list[dict[str, Any]], loc: list[object]) -> tuple[list[object], str]:
    """The field and one sentence for the errors under `loc` (a union's branches, if several).

    A branch of the right type holding a bad value is the real problem (the other branches
    only say "wrong type"); if every branch is a type mismatch, say which types would do.
    """
    mismatches = [e for e in group if str(e.get("type", "")).endswith("_type")]
    specific = [e for e in group if e not in mismatches]
    if specific:
        e = specific[0]
        return _field_path(e.get("loc", ())), _clean_msg(str(e.get("msg", "invalid value")))
    wants = [_clean_msg(str(e.get("msg", ""))).removeprefix("Input should be ") for e in group]
    return loc, "Input should be " + " or ".join(dict.fromkeys(w for w in wants if w))


def _clean_msg(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _required_fields(request: Request) -> list[str]:
    """Required top-level fields of the matched route's body model (empty if unknown)."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body_field, "field_info", None), "annotation", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [name for name, field in model.model_fields.items() if field.is_required()]


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the envelope (FastAPI's 422 becomes a 400)."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        body = envelope(exc.message, type=exc.type, param=exc.param, code=exc.code)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    async def on_serve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        return await on_api_error(request, from_serve_error(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc, required=_required_fields(request))
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
