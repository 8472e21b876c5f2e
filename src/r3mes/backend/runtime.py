"""What one running backend holds: settings, database, cache client, HTTP client, workers.

Built in the app's lifespan and stored on `app.state.runtime`; dependencies in `api/deps.py`
read it from there, and tests replace pieces through `dependency_overrides`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from r3mes.backend.db.engine import Database
from r3mes.backend.keyfiles import load_or_create_secret
from r3mes.backend.settings import BackendSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

HTTP_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
STOP_TIMEOUT_S = 30.0
"""How long `close` waits for cancelled workers before it says which ones still run."""


@dataclass
class Runtime:
    """Per-process state of the backend (see the module docstring)."""

    settings: BackendSettings
    db: Database
    jwt_key: bytes
    key_pepper: bytes
    http: httpx.AsyncClient
    redis: Redis | None = None
    services: dict[str, Any] = field(default_factory=dict)
    """Long-lived service objects by name (key cache, rate limiter, node directory, ...)."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def open(cls, settings: BackendSettings) -> Runtime:
        db = Database(settings)
        redis = None
        if settings.redis_url:
            from redis.asyncio import Redis

            redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
        return cls(
            settings=settings,
            db=db,
            jwt_key=load_or_create_secret(settings.data_dir / "jwt.key", settings.jwt_secret),
            key_pepper=load_or_create_secret(settings.data_dir / "pepper.key", settings.key_pepper),
            http=httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False),
            redis=redis,
        )

    def spawn(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run a background worker until shutdown; a crash is logged, never silent."""

        async def guarded() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("backend worker %s stopped with an error", name)

        self._tasks.append(asyncio.create_task(guarded(), name=f"r3mes-backend-{name}"))

    async def close(self) -> None:
        """Stop every worker (the chain follower among them), then close the clients.

        A worker that ignores its cancellation is named in an error after `STOP_TIMEOUT_S`
        and left behind rather than holding the shutdown up forever."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            if pending:
                names = ", ".join(sorted(t.get_name() for t in pending))
                log.error("backend workers still running after shutdown: %s", names)
        try:
            await self.http.aclose()
            if self.redis is not None:
                await self.redis.aclose()
        finally:
            await self.db.dispose()
