"""Exponential backoff for retryable failures only.

Network blips, 5xx answers and timeouts are retried with a growing delay; anything else
(a rejected signature, malformed input) fails at once, because retrying it only wastes
time and hides the real problem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from r3mes.node.errors import RetryableError, ValidationError, classify

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable step is tried again."""

    max_retries: int = 3
    """Retries after the first attempt (0 = try once)."""
    initial_delay: float = 1.0
    """Seconds to wait before the first retry."""
    max_delay: float = 60.0
    """Upper bound on any single wait."""
    backoff_factor: float = 2.0
    """Each wait is the previous one times this."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValidationError(f"retries must be >= 0 (0 = try once), got {self.max_retries}")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValidationError("retry delays must be >= 0")
        if self.backoff_factor < 1.0:
            raise ValidationError("backoff_factor must be >= 1.0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        return float(min(self.max_delay, self.initial_delay * self.backoff_factor ** (attempt - 1)))


def call_with_retry(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> T:
    """Call `fn`; on a retryable failure wait and try again, up to `policy.max_retries` times.

    Failures are classified with `r3mes.node.errors.classify`; the last error (classified)
    is raised. `should_stop` lets a shutting-down service abandon the wait early.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # classified right below; non-retryable ones re-raise
            error = classify(exc)
            attempt += 1
            if not isinstance(error, RetryableError) or attempt > policy.max_retries:
                raise error from exc
            if should_stop():
                raise error from exc
            wait = policy.delay(attempt)
            logger.warning(
                "retrying %s after %.2fs (attempt %d/%d): %s",
                what,
                wait,
                attempt,
                policy.max_retries,
                error,
            )
            sleep(wait)
