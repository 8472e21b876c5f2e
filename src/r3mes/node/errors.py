"""Errors raised by the network's roles (miner, validator, proposer, serving node).

Two questions matter when a step fails: *may it be retried* (a network blip, a 5xx, a
timeout) and *is it the caller's fault* (a bad key, malformed input). The hierarchy answers
both; `classify` turns foreign exceptions (httpx, OS, timeouts) into one of these.
"""

from __future__ import annotations

from r3mes.errors import R3mesError
from r3mes.runtime.errors import ServiceError

__all__ = [
    "AuthenticationError",
    "NetworkError",
    "NodeError",
    "ResourceError",
    "RetryableError",
    "ServiceError",
    "TransactionError",
    "ValidationError",
    "classify",
    "is_retryable",
]


class NodeError(R3mesError):
    """Base class of every error in `r3mes.node`."""


class RetryableError(NodeError):
    """A failure that may succeed if tried again later (backoff applies)."""


class NetworkError(RetryableError):
    """A peer (chain RPC, storage, registry source) could not be reached or answered 5xx."""


class AuthenticationError(NodeError):
    """A signature, key or permission was rejected; retrying will not help."""


class ResourceError(NodeError):
    """The machine ran out of something (disk, memory) or a size limit was exceeded."""


class ValidationError(NodeError):
    """Input (flags, a task, a fetched artifact) is malformed or inconsistent."""


class TransactionError(NodeError):
    """A mining transaction could not be carried out; it has been rolled back."""

    def __init__(self, message: str, *, tx_id: str, state: str) -> None:
        super().__init__(message)
        self.tx_id = tx_id
        self.state = state


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def classify(exc: BaseException) -> NodeError:
    """Map any exception to the node hierarchy, preserving the message.

    Already-classified errors pass through. httpx transport errors, timeouts and
    connection failures become `NetworkError`; HTTP 5xx too, 401/403 become
    `AuthenticationError`, other 4xx `ValidationError`. `MemoryError` and disk-full
    `OSError`s become `ResourceError`. Anything else is a non-retryable `NodeError`.
    """
    if isinstance(exc, NodeError):
        return exc
    import httpx  # local: keep import of this module cheap

    from r3mes.chain.errors import ClientError, NotFound, TxRejected

    if isinstance(exc, TxRejected):
        return ValidationError(f"the ledger rejected the transaction: {exc}")
    if isinstance(exc, NotFound):
        return ValidationError(str(exc))
    if isinstance(exc, ClientError):  # unreachable, timed out, or not included in time
        return NetworkError(str(exc))

    message = f"{type(exc).__name__}: {exc}"
    code = _status_code(exc)
    if code is not None:
        if code >= 500 or code == 429:
            return NetworkError(f"peer answered HTTP {code}: {message}")
        if code in (401, 403):
            return AuthenticationError(f"peer refused the credentials (HTTP {code}): {message}")
        return ValidationError(f"peer rejected the request (HTTP {code}): {message}")
    if isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError):
        return NetworkError(f"could not reach the peer: {message}")
    if isinstance(exc, MemoryError):
        return ResourceError(f"out of memory: {message}")
    if isinstance(exc, OSError) and exc.errno in (28, 122):  # ENOSPC, EDQUOT
        return ResourceError(f"out of disk space: {message}")
    if isinstance(exc, ValueError):
        return ValidationError(message)
    return NodeError(message)


def is_retryable(exc: BaseException) -> bool:
    """True when `classify(exc)` is a `RetryableError`."""
    return isinstance(classify(exc), RetryableError)
