"""Pure-ASGI middleware: body size limit and security headers (CORS is Starlette's); and the
log filter that keeps credentials in query strings out of the server's logs."""

from __future__ import annotations

import json
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
"""Sent on every response; the dashboard's Content-Security-Policy is set where it is served."""


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by `Content-Length` or while streaming."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    await self._refuse(scope, send)
                    return
        seen = 0
        too_large = False

        async def counting_receive() -> Message:
            # Over the limit, the app sees a disconnect: it stops reading and whatever it
            # answers is replaced by our 413 (an exception here would become its 500).
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"request body is larger than {self.max_bytes} bytes"
        if str(scope.get("path", "")).startswith("/v1/"):
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "payload_too_large",
            }
        else:
            error = {"code": "payload_too_large", "message": message}
        body = json.dumps({"error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


_CREDENTIAL_PARAM = re.compile(
    r"(?i)([?&](?:token|access_token|refresh_token|api_key|apikey|key|password|secret)=)[^&\s\"']*"
)
SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error")
"""uvicorn writes each request line (access) and websocket handshake (error) with its query
string; a client may pass a token there (`/ws/...?token=`)."""


def redact_credentials(text: str) -> str:
    """`text` with the values of credential-named query parameters replaced."""
    return _CREDENTIAL_PARAM.sub(r"\1[redacted]", text)


class RedactCredentials(logging.Filter):
    """Rewrites a record's message and string arguments through `redact_credentials`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_credentials(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_credentials(a) if isinstance(a, str) else a for a in record.args
            )
        return True


def install_log_redaction() -> None:
    """Put `RedactCredentials` on uvicorn's loggers once (idempotent; called by create_app)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())
