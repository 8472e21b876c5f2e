"""`GET /api/serving/payouts`: what serving operators were paid, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from r3mes.backend.api.deps import ReadSessionDep, SettingsDep
from r3mes.backend.db.chat import ChatPayout, ChatRequest

router = APIRouter(prefix="/api/serving", tags=["serving"])


@router.get("/payouts")
async def payouts(
    session: ReadSessionDep,
    settings: SettingsDep,
    operator: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    """Payouts (pending ones are recorded and being sent), and credits not yet paid out."""
    query = select(ChatPayout).order_by(ChatPayout.id.desc()).limit(limit).offset(offset)
    unpaid = select(ChatRequest.node, func.sum(ChatRequest.credits)).where(
        ChatRequest.payout_id.is_(None), ChatRequest.node.is_not(None), ChatRequest.credits > 0
    )
    if operator is not None:
        query = query.where(ChatPayout.operator == operator)
        unpaid = unpaid.where(ChatRequest.node == operator)
    rows = (await session.scalars(query)).all()
    owed = (await session.execute(unpaid.group_by(ChatRequest.node))).all()
    return {
        "share_bps": settings.operator_share_bps,
        "every_blocks": settings.payout_every_blocks,
        "payouts": [
            {
                "id": p.id,
                "operator": p.operator,
                "amount": p.amount,
                "gross": p.gross,
                "requests": p.requests,
                "status": p.status,
                "memo": p.memo,
                "tx_hash": p.tx_hash,
                "height": p.height,
                "created_at": p.created_at.isoformat(),
                "sent_at": p.sent_at.isoformat() if p.sent_at else None,
            }
            for p in rows
        ],
        "unpaid": {str(node): int(total) for node, total in owed},
    }
