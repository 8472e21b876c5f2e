"""Backend fixtures: every database test runs on SQLite and on PostgreSQL (support.backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from support.backend import (
    REDIS_ENV,
    fresh_postgres_database,
    make_settings,
    running,
    service_url,
)

from r3mes.backend.app import create_app
from r3mes.backend.settings import BackendSettings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """'' (SQLite in the test's home) or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield ""
        return
    yield from fresh_postgres_database()


@pytest.fixture
def redis_url() -> str:
    return service_url(REDIS_ENV, "Redis")


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test (or concurrently running suite) shares."""
    import uuid

    return f"r3mes-test-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> BackendSettings:
    return make_settings(tmp_path, database_url=database_url)


@pytest.fixture
async def client(settings: BackendSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as c:
        yield c
