"""`Annotated` dependencies for the routers; every one reads `app.state.runtime`.

Tests swap any of them with `app.dependency_overrides[get_x] = ...`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.runtime import Runtime
from r3mes.backend.settings import BackendSettings


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings(runtime: RuntimeDep) -> BackendSettings:
    return runtime.settings


SettingsDep = Annotated[BackendSettings, Depends(get_settings)]


async def get_read_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """A read-only session (no writes are committed through it)."""
    async with runtime.db.read() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]


def client_ip(request: Request) -> str:
    """The peer address (the backend does not trust forwarding headers by default)."""
    return request.client.host if request.client else "unknown"


ClientIpDep = Annotated[str, Depends(client_ip)]
