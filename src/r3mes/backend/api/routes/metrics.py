"""`GET /metrics`: the gateway's Prometheus series (text exposition format)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from r3mes.backend.api.routes.chat import ChatDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(chat: ChatDep) -> Response:
    return Response(chat.metrics.render(), media_type=CONTENT_TYPE_LATEST)
