"""The backend's errors: one hierarchy, each with an HTTP status and a stable code.

Routes raise these; `api/errors.py` renders them as OpenAI-shaped errors on `/v1/...` and as
`{"error": {"code", "message"}}` elsewhere. Messages say what happened and what to do; they
never carry secrets, tokens or stack traces.
"""

from __future__ import annotations

from r3mes.errors import R3mesError


class BackendError(R3mesError):
    """An error a client caused or can act on."""

    status: int = 400
    code: str = "invalid_request"
    type: str = "invalid_request_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(BackendError):
    """Malformed or inconsistent input."""


class Unauthorized(BackendError):
    """Missing, invalid, expired or revoked credentials."""

    status = 401
    code = "invalid_api_key"
    type = "authentication_error"


class Forbidden(BackendError):
    """Authenticated, but not allowed (wrong scope, not an admin)."""

    status = 403
    code = "forbidden"
    type = "permission_error"


class NotFound(BackendError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class Conflict(BackendError):
    """The request contradicts stored state (e.g. an idempotency key reused with another body)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(BackendError):
    status = 413
    code = "payload_too_large"


class InsufficientCredits(BackendError):
    status = 402
    code = "insufficient_quota"
    type = "insufficient_quota"


class RateLimited(BackendError):
    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"


class Unavailable(BackendError):
    """A dependency (database, ledger, every serving node) cannot answer now."""

    status = 503
    code = "service_unavailable"
    type = "server_error"


class ConfigError(R3mesError):
    """The backend's settings are unusable (bad URL, unreadable secret file)."""
