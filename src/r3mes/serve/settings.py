"""Settings of the HTTP server (built at the edge from flags and env, then passed in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from r3mes.serve.errors import InvalidRequest


@dataclass(frozen=True)
class ServerSettings:
    """How the API behaves; the engine's limits live in `EngineConfig`."""

    admin_token: str | None = field(default=None, repr=False)
    """Bearer token for the admin endpoints; None disables them. Never logged."""
    default_max_tokens: int = 256
    """Completion length when a request gives no max_tokens."""
    max_body_bytes: int = 1024 * 1024
    """Largest request body accepted."""
    request_timeout_s: float = 600.0
    """Longest a request may run before it is cancelled."""

    def __post_init__(self) -> None:
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise InvalidRequest(
                "the admin token must be at least 16 characters; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if self.default_max_tokens < 1:
            raise InvalidRequest("default_max_tokens must be at least 1")
        if self.max_body_bytes < 1024:
            raise InvalidRequest("max_body_bytes must be at least 1024")
        if self.request_timeout_s <= 0:
            raise InvalidRequest("request_timeout_s must be positive")
