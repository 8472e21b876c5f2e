"""All routers, mounted in one place."""

from __future__ import annotations

from fastapi import APIRouter

from r3mes.backend.api.routes import chat, health, metrics, models, payouts, pricing, web

api_router = APIRouter()
api_router.include_router(health.router)
for chat_router in (chat.router, models.router, pricing.router, payouts.router, metrics.router):
    api_router.include_router(chat_router)

# The dashboard (`/`, `/ui/...`) stays last: it must never shadow /api, /v1 or /ws.
api_router.include_router(web.router)
