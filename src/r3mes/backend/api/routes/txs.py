"""`GET /api/txs/{hash}`, `/api/accounts/{address}`, `/api/accounts/{address}/txs`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from r3mes.backend.api.deps import RuntimeDep
from r3mes.backend.api.routes.explorer_common import CursorArg, LimitArg, cached_json
from r3mes.backend.api.routes.params import AddressPath
from r3mes.backend.services import explorer

router = APIRouter(prefix="/api", tags=["explorer"])


@router.get("/txs/{tx_hash}")
async def tx(
    request: Request, runtime: RuntimeDep, tx_hash: Annotated[str, Path(max_length=70)]
) -> Response:
    """A transaction: signer, decoded messages, result code, log and events."""
    return await cached_json(request, runtime, lambda s: explorer.tx(s, tx_hash))


@router.get("/accounts/{address}")
async def account(request: Request, runtime: RuntimeDep, address: AddressPath) -> Response:
    """An account as the ledger shows it (plus submission and attestation counts)."""
    return await cached_json(request, runtime, lambda s: explorer.account(s, address))


@router.get("/accounts/{address}/txs")
async def account_txs(
    request: Request,
    runtime: RuntimeDep,
    address: AddressPath,
    limit: LimitArg = 50,
    cursor: CursorArg = None,
) -> Response:
    """Transactions this address signed or received, newest first."""
    return await cached_json(
        request,
        runtime,
        lambda s: explorer.account_txs(s, address, limit=limit, cursor=cursor),
    )
