"""`GET /v1/pricing`: credits per 1,000 prompt and completion tokens, per model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from r3mes.backend.api.deps import SettingsDep

router = APIRouter(prefix="/v1", tags=["chat"])


@router.get("/pricing")
async def pricing(settings: SettingsDep) -> dict[str, Any]:
    """Prices in credits; a model not listed costs `default`. Cost of a request:
    ceil((prompt_tokens * prompt_per_1k + completion_tokens * completion_per_1k) / 1000)."""
    return {
        "unit": "credits per 1000 tokens",
        "default": settings.chat_default_price.model_dump(),
        "models": {name: p.model_dump() for name, p in sorted(settings.chat_prices.items())},
        "max_tokens_cap": settings.chat_max_tokens_cap,
        "default_max_tokens": settings.chat_default_max_tokens,
    }
