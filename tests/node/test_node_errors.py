"""Error classification and exponential backoff."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import httpx
import pytest

from r3mes.node.errors import (
    AuthenticationError,
    NetworkError,
    NodeError,
    ResourceError,
    ValidationError,
    classify,
    is_retryable,
)
from r3mes.node.runtime.retry import RetryPolicy, call_with_retry


def _status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://x")
    return httpx.HTTPStatusError(
        "e", request=request, response=httpx.Response(code, request=request)
    )


def test_classify() -> None:
    assert isinstance(classify(httpx.ConnectError("x")), NetworkError)
    assert isinstance(classify(httpx.ReadTimeout("x")), NetworkError)
    assert isinstance(classify(TimeoutError()), NetworkError)
    assert isinstance(classify(_status(503)), NetworkError)
    assert isinstance(classify(_status(403)), AuthenticationError)
    assert isinstance(classify(_status(400)), ValidationError)
    assert isinstance(classify(OSError(errno.ENOSPC, "full")), ResourceError)
    assert isinstance(classify(MemoryError()), ResourceError)
    assert type(classify(RuntimeError("x"))) is NodeError
    assert is_retryable(_status(500)) and not is_retryable(_status(401))


def test_backoff_grows_and_caps() -> None:
    policy = RetryPolicy(max_retries=5, initial_delay=1.0, max_delay=5.0, backoff_factor=2.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ValidationError, match="backoff_factor"):
        RetryPolicy(backoff_factor=0.5)
    with pytest.raises(ValidationError, match="retries must be >= 0"):
        RetryPolicy(max_retries=-1)


def test_call_with_retry_only_retries_retryable() -> None:
    sleeps: list[float] = []
    calls: Iterator[Exception | str] = iter(
        [httpx.ConnectError("a"), httpx.ConnectError("b"), "ok"]
    )

    def flaky() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    policy = RetryPolicy(max_retries=3, initial_delay=0.5)
    assert call_with_retry(flaky, policy=policy, what="t", sleep=sleeps.append) == "ok"
    assert sleeps == [0.5, 1.0]

    def denied() -> str:
        raise _status(401)

    with pytest.raises(AuthenticationError):
        call_with_retry(denied, policy=policy, what="t", sleep=sleeps.append)
    assert sleeps == [0.5, 1.0]

    def down() -> str:
        raise httpx.ConnectError("down")

    with pytest.raises(NetworkError):
        call_with_retry(down, policy=RetryPolicy(max_retries=1, initial_delay=0), what="t")
    with pytest.raises(NetworkError):  # a stopping service does not wait
        call_with_retry(
            down, policy=policy, what="t", should_stop=lambda: True, sleep=sleeps.append
        )
    assert sleeps == [0.5, 1.0]
