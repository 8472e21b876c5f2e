"""`create_app(engine, settings)`: the OpenAI-compatible FastAPI application.

Routes: /v1/chat/completions, /v1/completions, /v1/models, the admin-only
/v1/load_lora_adapter and /v1/unload_lora_adapter, /health and /metrics.

With `model: "auto"` the completion responses carry the router's decision in headers:
`x-r3mes-route` (the best-scoring route), `x-r3mes-route-score` (its cosine similarity,
4 decimals) and `x-r3mes-route-fallback` ("true" when the request went to the base model
because the score was below the route's threshold or its adapter is not loaded).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from r3mes.registry.unified import UnifiedRegistry
from r3mes.serve.api.completions import (
    AUTO_MODEL,
    Run,
    encode_prompt,
    new_completion,
    resolve_adapter,
    respond,
    sampling_params,
)
from r3mes.serve.api.deps import (
    AdminDep,
    EngineDep,
    MetricsDep,
    RegistryDep,
    RouterDep,
    SettingsDep,
)
from r3mes.serve.api.errors import ApiError, install_error_handlers
from r3mes.serve.api.limits import BodyLimit
from r3mes.serve.api.metrics import ServeMetrics
from r3mes.serve.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoraRequest,
    UnloadLoraRequest,
)
from r3mes.serve.chat_template import STOP_MARKERS, ChatMessage, render_chat
from r3mes.serve.engine import ServingEngine
from r3mes.serve.registry_adapters import RegistryRef, load_registry_adapter
from r3mes.serve.router import SemanticRouter
from r3mes.serve.settings import ServerSettings
from r3mes.serve.types import GenerationRequest

completions = APIRouter(prefix="/v1")
admin = APIRouter(prefix="/v1")
service = APIRouter()


@completions.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    router: RouterDep,
    metrics: MetricsDep,
) -> JSONResponse | StreamingResponse:
    """Chat completion with the base model, an adapter (`model`), or the router (`auto`)."""
    messages = [
        ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
        for m in body.messages
    ]
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    resolved = await resolve_adapter(
        model=body.model, engine=engine, router=router, route_text=last_user, param="messages"
    )
    prompt_ids = await encode_prompt(engine, render_chat(messages), param="messages")
    params = sampling_params(
        body,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        settings=settings,
        extra_stop=STOP_MARKERS,
    )
    completion = new_completion(
        "chat",
        model=resolved.model,
        request=GenerationRequest(prompt_ids=prompt_ids, adapter=resolved.adapter, params=params),
        include_usage=body.include_usage(),
        continuous_usage=body.continuous_usage(),
    )
    run = Run(completion, engine=engine, metrics=metrics)
    return await respond(
        run,
        stream=body.stream,
        timeout_s=settings.request_timeout_s,
        is_disconnected=request.is_disconnected,
        headers=resolved.headers(),
    )


@completions.post("/completions", response_model=None)
async def text_completions(
    body: CompletionRequest,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    router: RouterDep,
    metrics: MetricsDep,
) -> JSONResponse | StreamingResponse:
    """Raw text completion of `prompt` (no chat template)."""
    text = body.prompt_text()
    resolved = await resolve_adapter(
        model=body.model, engine=engine, router=router, route_text=text, param="prompt"
    )
    prompt_ids = await encode_prompt(engine, text, param="prompt")
    params = sampling_params(body, max_tokens=body.max_tokens, settings=settings)
    completion = new_completion(
        "text",
        model=resolved.model,
        request=GenerationRequest(prompt_ids=prompt_ids, adapter=resolved.adapter, params=params),
        include_usage=body.include_usage(),
        continuous_usage=body.continuous_usage(),
    )
    run = Run(completion, engine=engine, metrics=metrics)
    return await respond(
        run,
        stream=body.stream,
        timeout_s=settings.request_timeout_s,
        is_disconnected=request.is_disconnected,
        headers=resolved.headers(),
    )


@completions.get("/models")
async def list_models(engine: EngineDep, router: RouterDep) -> dict[str, Any]:
    """The base model, every loaded adapter, and `auto` when the router is on."""
    created = int(time.time())
    base = engine.model_name
    data = [{"id": base, "object": "model", "created": created, "owned_by": "r3mes", "root": base}]
    for name in engine.adapters.names():
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "r3mes",
                "root": name,
                "parent": base,
            }
        )
    if router is not None:
        data.append({"id": AUTO_MODEL, "object": "model", "created": created, "owned_by": "r3mes"})
    return {"object": "list", "data": data}


@admin.post("/load_lora_adapter")
async def load_lora_adapter(
    body: LoadLoraRequest, engine: EngineDep, registry: RegistryDep, _: AdminDep
) -> Any:
    """Load (or replace with a new version) an adapter from a PEFT directory on this host
    (`lora_path`) or from the artifact registry (`lora_id`: ID or ID@VERSION)."""
    if body.lora_path is not None:
        path = Path(body.lora_path)
        entry = await asyncio.to_thread(engine.load_adapter, body.lora_name, path)
        return {"status": "loaded", "lora_name": entry.name, "version": entry.serial}
    assert body.lora_id is not None  # the schema wants exactly one source
    if registry is None:
        raise ApiError(
            400,
            "this server has no artifact registry; start it with --registry-home",
            param="lora_id",
            code="registry_disabled",
        )
    ref = RegistryRef.parse(body.lora_id)
    entry = await asyncio.to_thread(
        load_registry_adapter, engine, name=body.lora_name, registry=registry, ref=ref
    )
    return {
        "status": "loaded",
        "lora_name": entry.name,
        "version": entry.serial,
        "origin": entry.origin,
    }


@admin.post("/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoraRequest, engine: EngineDep, _: AdminDep) -> Any:
    """Stop serving an adapter; requests already using it finish first."""
    entry = engine.unload_adapter(body.lora_name)
    return {"status": "unloaded", "lora_name": entry.name}


@service.get("/health")
async def health(engine: EngineDep) -> JSONResponse:
    """200 while the engine thread runs, 503 otherwise."""
    stats = engine.stats()
    body = {
        "status": "ok" if engine.alive else "stopped",
        "model": engine.model_name,
        "adapters": len(engine.adapters.names()),
        "running": stats.running,
        "waiting": stats.waiting,
    }
    return JSONResponse(body, status_code=200 if engine.alive else 503)


@service.get("/metrics")
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(
    engine: ServingEngine,
    settings: ServerSettings,
    *,
    router: SemanticRouter | None = None,
    registry: UnifiedRegistry | None = None,
) -> FastAPI:
    """Build the API over a started (or to-be-started) engine; nothing global is created.

    `registry` enables `lora_id` (registry adapters) in /v1/load_lora_adapter.
    """
    app = FastAPI(title="R3MES serving", version="1", docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.settings = settings
    app.state.router = router
    app.state.registry = registry
    app.state.metrics = ServeMetrics(engine)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.include_router(completions)
    app.include_router(admin)
    app.include_router(service)
    return app


__all__ = ["ApiError", "create_app"]
