"""`GET /health`: is the service, its database and (when configured) Redis answering."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from r3mes.backend.api.deps import RuntimeDep

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0


@router.get("/health")
async def health(runtime: RuntimeDep) -> JSONResponse:
    checks: dict[str, Any] = {"database": await _database(runtime)}
    if runtime.redis is not None:
        checks["redis"] = await _redis(runtime)
    for name, probe in runtime.services.get("health_checks", {}).items():
        checks[name] = await probe()
    ok = all(check.get("ok", False) for check in checks.values() if check.get("required", True))
    return JSONResponse(
        {"status": "ok" if ok else "degraded", "checks": checks}, status_code=200 if ok else 503
    )


async def _database(runtime: RuntimeDep) -> dict[str, Any]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), runtime.db.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "backend": "sqlite" if runtime.db.is_sqlite else "postgresql"}


async def _redis(runtime: RuntimeDep) -> dict[str, Any]:
    assert runtime.redis is not None
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await runtime.redis.ping()
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True}
