"""Backend test helpers: service URLs (PostgreSQL, Redis), isolated settings, an in-process app.

PostgreSQL and Redis come from `scripts/services.sh` (which `.ci/run` calls) through
`R3MES_TEST_POSTGRES_URL` / `R3MES_TEST_REDIS_URL`. Without them a test is skipped on a
developer's machine, but fails when `CI` is set: CI never skips the real services silently.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from r3mes.backend.settings import BackendSettings

POSTGRES_ENV = "R3MES_TEST_POSTGRES_URL"
REDIS_ENV = "R3MES_TEST_REDIS_URL"


def service_url(env: str, what: str) -> str:
    """The URL in `env`; missing: fail under CI, skip elsewhere."""
    url = os.environ.get(env, "")
    if url:
        return url
    message = f'{what} is not configured ({env}); run: eval "$(scripts/services.sh)"'
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    admin = service_url(POSTGRES_ENV, "PostgreSQL")
    name = f"r3mes_test_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def make_settings(home: Path, **overrides: Any) -> BackendSettings:
    """Settings for an isolated backend: no chain follower unless the test asks for one."""
    values: dict[str, Any] = {
        "home": home,
        "follow_chain": False,
        "jwt_secret": "test-jwt-secret-0123456789abcdef",
        "key_pepper": "test-key-pepper-0123456789abcdef",
    }
    values.update(overrides)
    return BackendSettings(**values)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run `app`'s lifespan and give an HTTP client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c
