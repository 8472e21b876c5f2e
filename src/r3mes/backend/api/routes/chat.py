"""`POST /v1/chat/completions` and `POST /v1/completions`: paid chat through serving nodes.

OpenAI's shapes, streamed or not; an API key (scope `chat`) or a session pays. The flow is
`services/chat.py`; this router only hands it the request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from r3mes.backend.api.deps import ChatPrincipalDep, ClientIpDep, RuntimeDep
from r3mes.backend.runtime import Runtime
from r3mes.backend.services.chat import Caller, ChatService, Kind
from r3mes.backend.services.chat_setup import chat_service
from r3mes.backend.services.gateway import UpstreamRefused

router = APIRouter(prefix="/v1", tags=["chat"])


async def get_chat(runtime: RuntimeDep) -> ChatService:
    return chat_service(runtime)


ChatDep = Annotated[ChatService, Depends(get_chat)]
IdempotencyHeader = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
]


async def _complete(
    kind: Kind,
    request: Request,
    chat: ChatService,
    principal: ChatPrincipalDep,
    ip: str,
    idempotency_key: str | None,
) -> Response:
    caller = Caller(
        account_id=principal.account_id, key_id=principal.key_id, tier=principal.tier, ip=ip
    )
    raw = await request.body()
    try:
        return await chat.complete(
            kind=kind, raw=raw, caller=caller, idempotency_key=idempotency_key
        )
    except UpstreamRefused as exc:
        # The node judged the request itself invalid (too long a prompt, a bad field): its
        # OpenAI-shaped error is the most precise answer.
        return Response(
            exc.body, status_code=exc.status, media_type="application/json", headers=exc.headers
        )


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    request: Request,
    chat: ChatDep,
    principal: ChatPrincipalDep,
    ip: ClientIpDep,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    """Chat completion (OpenAI shape) on the least loaded node serving `model`."""
    return await _complete("chat", request, chat, principal, ip, idempotency_key)


@router.post("/completions", response_model=None)
async def completions(
    request: Request,
    chat: ChatDep,
    principal: ChatPrincipalDep,
    ip: ClientIpDep,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    """Text completion of `prompt` (OpenAI shape)."""
    return await _complete("text", request, chat, principal, ip, idempotency_key)


__all__ = ["Runtime", "get_chat", "router"]
