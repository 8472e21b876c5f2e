"""What every explorer route shares: the cached, ETagged JSON answer and paging params."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.services.cache import etag_of
from r3mes.backend.services.live import explorer_service

LimitArg = Annotated[int, Query(ge=1, le=200, description="Items per page (1-200).")]
CursorArg = Annotated[
    str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
]
RoundsArg = Annotated[int, Query(ge=1, le=100, description="Rounds the trend looks back.")]

Compute = Callable[[AsyncSession], Awaitable[Any]]


async def cached_json(request: Request, runtime: RuntimeDep, compute: Compute) -> Response:
    """`compute`'s answer, from the cache of the current block when there; with an ETag,
    and 304 when the client already holds it (If-None-Match)."""
    cache = explorer_service(runtime).cache
    key = (
        request.url.path
        + "?"
        + "&".join(sorted(f"{k}={v}" for k, v in request.query_params.multi_items()))
    )
    generation = await cache.current_generation()
    body = await cache.get(key, generation=generation)
    if body is None:
        async with runtime.db.read() as session:
            doc = await compute(session)
        body = json.dumps(doc, separators=(",", ":")).encode()
        await cache.put(key, body, generation=generation)
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    match = request.headers.get("if-none-match", "")
    if etag in {tag.strip() for tag in match.split(",")} or match.strip() == "*":
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
