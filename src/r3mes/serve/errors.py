"""Errors raised by the serving engine, the adapter cache, the router and the API.

Each carries the context a caller needs and a message that says what to do. The API maps
them onto OpenAI's error envelope (see `r3mes.serve.api.errors`).
"""

from __future__ import annotations

from r3mes.errors import R3mesError


class ServeError(R3mesError):
    """Base class of every serving error."""


class InvalidRequest(ServeError):
    """A request that can never succeed as sent (bad parameters, prompt too long...)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AdapterNotFound(ServeError):
    """The named adapter is not registered (loading, unloading)."""

    def __init__(self, name: str, known: list[str]) -> None:
        listing = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"adapter {name!r} is not loaded; loaded adapters: {listing}. "
            "Load it with /v1/load_lora_adapter or `--adapter NAME=PATH|registry:ID`."
        )
        self.name = name


class ModelNotFound(ServeError):
    """A request named a model this server does not serve."""

    def __init__(self, name: str, *, base: str, adapters: list[str], router: bool) -> None:
        names = [f"{base} (the base model)", *sorted(adapters)]
        if router:
            names.append("auto (the semantic router picks an adapter)")
        super().__init__(
            f"model {name!r} is not served here; available models: {', '.join(names)}. "
            "Load another adapter with /v1/load_lora_adapter or `--adapter NAME=PATH`."
        )
        self.name = name
        self.available = [base, *sorted(adapters), *(["auto"] if router else [])]


class AdapterLoadError(ServeError):
    """An adapter could not be read or does not fit the base model."""

    def __init__(self, name: str, reason: str, *, param: str = "lora_path") -> None:
        super().__init__(f"cannot load adapter {name!r}: {reason}")
        self.name = name
        self.reason = reason
        self.param = param
        """The request field the adapter came from (`lora_path` or `lora_id`)."""


class EngineClosed(ServeError):
    """The engine was shut down; no more requests are accepted."""

    def __init__(self) -> None:
        super().__init__("the serving engine is stopped; restart the server")


class EngineOverloaded(ServeError):
    """The server cannot take (or could not start) the request now; retry later."""

    def __init__(self, reason: str, *, retry_after_s: int) -> None:
        super().__init__(f"{reason}; retry in {retry_after_s} s")
        self.reason = reason
        self.retry_after_s = retry_after_s
        """Seconds the client should wait before retrying (the Retry-After header)."""


class CacheBudgetExceeded(ServeError):
    """The batch would need more KV-cache memory than the configured budget allows."""

    def __init__(self, *, needed: int, budget: int) -> None:
        super().__init__(
            f"the KV cache would need {needed} bytes, over its budget of {budget} bytes; "
            "raise --kv-cache-mb or lower --max-batch-size"
        )
        self.needed = needed
        self.budget = budget


class RouterError(ServeError):
    """A route file is malformed or the router cannot embed text."""
