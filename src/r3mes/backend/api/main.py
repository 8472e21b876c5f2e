"""All routers, mounted in one place."""

from __future__ import annotations

from fastapi import APIRouter

from r3mes.backend.api.routes import (
    adapters,
    admin,
    analytics,
    auth,
    blocks,
    chat,
    credits,
    disputes,
    faucet,
    health,
    keys,
    leaderboard,
    me,
    metrics,
    miners,
    models,
    network,
    payouts,
    pricing,
    rounds,
    serving,
    txs,
    validators,
    web,
    ws,
)

api_router = APIRouter()
# The paid chat routes first: routing tries the routers in order, and chat is the hot path.
api_router.include_router(chat.router)
api_router.include_router(health.router)
for accounts_router in (auth.router, me.router, keys.router, credits.router, admin.router):
    api_router.include_router(accounts_router)
for chat_router in (models.router, pricing.router, payouts.router, metrics.router):
    api_router.include_router(chat_router)
for explorer_router in (
    network.router,
    leaderboard.router,
    miners.router,
    validators.router,
    serving.router,
    rounds.router,
    disputes.router,
    adapters.router,
    blocks.router,
    txs.router,
    analytics.router,
    faucet.router,
    ws.router,
):
    api_router.include_router(explorer_router)

# The dashboard (`/`, `/ui/...`) stays last: it must never shadow /api, /v1 or /ws.
api_router.include_router(web.router)
