"""Requests, events and handles shared by the engine and the API."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from r3mes.serve.sampling import SamplingParams

FinishReason = Literal["stop", "length", "cancelled", "error", "rejected"]
""""rejected": never admitted (the queue wait ran out); the client should retry later."""


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to run."""

    prompt_ids: tuple[int, ...]
    """The tokenised prompt (BOS included if the model wants one)."""
    adapter: str | None
    """Public adapter name, or None for the base model."""
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class TokenEvent:
    """A generated token and the text it made safe to show (maybe empty)."""

    token_id: int
    text: str


@dataclass(frozen=True)
class FinishEvent:
    """The last event of a request."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    text: str = ""
    """Text held back until the end (a partial stop-string match that never completed)."""
    error: str | None = None
    retry_after_s: int | None = None
    """For "rejected": seconds after which a retry is likely to be admitted."""


EngineEvent = TokenEvent | FinishEvent
Sink = Callable[[EngineEvent], None]
"""Receives a request's events, on the engine thread; must not block."""


class RequestHandle:
    """The caller's side of a submitted request: its id and a way to cancel it."""

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop this request and free its slot at the next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()
