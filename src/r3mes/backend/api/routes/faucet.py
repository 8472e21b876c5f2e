"""`POST /api/faucet` (devnets and testnets only; see services/faucet.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from r3mes.backend.api.deps import ClientIpDep, RuntimeDep
from r3mes.backend.services.faucet import FaucetService, ip_bucket

router = APIRouter(prefix="/api", tags=["faucet"])
SERVICE_KEY = "faucet"


class FaucetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(max_length=128)
    amount: int | None = Field(default=None, ge=1, le=10**15)


def faucet_service(runtime: RuntimeDep) -> FaucetService:
    found = runtime.services.get(SERVICE_KEY)
    if not isinstance(found, FaucetService):
        found = FaucetService(runtime.settings, runtime.db)
        runtime.services[SERVICE_KEY] = found
    return found


@router.post("/faucet")
async def faucet(body: FaucetRequest, runtime: RuntimeDep, ip: ClientIpDep) -> dict[str, Any]:
    """Send test credits to `address` (cooldowns per address and per IP, amount capped)."""
    grant = await faucet_service(runtime).request(
        address=body.address, amount=body.amount, ip=ip_bucket(ip)
    )
    return grant.to_json()
