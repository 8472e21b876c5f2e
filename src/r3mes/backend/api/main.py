"""All routers, mounted in one place."""

from __future__ import annotations

from fastapi import APIRouter

from r3mes.backend.api.routes import health

api_router = APIRouter()
api_router.include_router(health.router)
