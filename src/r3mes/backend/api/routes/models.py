"""`GET /v1/models`: what the live serving nodes offer, in OpenAI's list shape.

The base model, each adapter by name (served at its newest live version) and pinned to each
live version (`name@version`), and `auto` (the semantic router) where a node offers it.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from r3mes.backend.api.deps import PrincipalDep
from r3mes.backend.api.routes.chat import ChatDep
from r3mes.backend.services.nodes import AUTO_MODEL, VERSION_SEP

router = APIRouter(prefix="/v1", tags=["chat"])


@router.get("/models")
async def list_models(chat: ChatDep, _: PrincipalDep) -> dict[str, Any]:
    """Models some routable serving node holds now."""
    created = int(time.time())
    found: dict[str, dict[str, Any]] = {}
    for node in chat.directory.routable():
        for name in sorted(node.models):
            entry = found.setdefault(
                name,
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "r3mes",
                    "nodes": 0,
                },
            )
            entry["nodes"] += 1
            if name == AUTO_MODEL:
                continue
            if name == node.base_model:
                entry["kind"] = "base"
                continue
            entry["kind"] = "adapter"
            entry["parent"] = node.base_model
            if node.adapter_version:
                versions = entry.setdefault("versions", [])
                if node.adapter_version not in versions:
                    versions.append(node.adapter_version)
                pinned = f"{name}{VERSION_SEP}{node.adapter_version}"
                sub = found.setdefault(
                    pinned,
                    {
                        "id": pinned,
                        "object": "model",
                        "created": created,
                        "owned_by": "r3mes",
                        "kind": "adapter",
                        "parent": node.base_model,
                        "version": node.adapter_version,
                        "nodes": 0,
                    },
                )
                sub["nodes"] += 1
    for entry in found.values():
        if "versions" in entry:
            entry["versions"].sort()
            entry["version"] = entry["versions"][-1]
    return {"object": "list", "data": [found[k] for k in sorted(found)]}
