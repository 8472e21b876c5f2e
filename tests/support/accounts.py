"""Account helpers for backend tests: wallet login, an API key, credits put on an account."""

from __future__ import annotations

import httpx

from r3mes.backend import adr036
from r3mes.backend.db.engine import Database
from r3mes.backend.services import credits
from r3mes.backend.settings import BackendSettings
from r3mes.chain.crypto import SigningKey


async def login_headers(client: httpx.AsyncClient, key: SigningKey) -> dict[str, str]:
    """Log `key` in (ADR-036) and return a Bearer header for its session."""
    made = await client.post("/api/auth/challenge", json={"address": key.address})
    assert made.status_code == 200, made.text
    message = made.json()["message"]
    body = {"message": message, **adr036.sign(key, message.encode()).to_json()}
    response = await client.post("/api/auth/login", json=body)
    assert response.status_code == 200, response.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def api_key(client: httpx.AsyncClient, key: SigningKey, name: str = "test") -> str:
    """A new API key (scopes chat + read) for `key`'s account."""
    headers = await login_headers(client, key)
    response = await client.post("/api/keys", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


async def fund(settings: BackendSettings, address: str, amount: int, key: str = "fund") -> int:
    """Deposit `amount` credits on `address`'s account straight through the ledger service."""
    db = Database(settings)
    try:
        async with db.write() as s, s.begin():
            account_id = await credits.ensure_account(s, address=address)
            await credits.deposit(s, account_id=account_id, amount=amount, idempotency_key=key)
        return account_id
    finally:
        await db.dispose()


async def audit(settings: BackendSettings) -> tuple[int, list[str]]:
    """(sum of all journal entries, accounts whose balances differ from their entries)."""
    db = Database(settings)
    try:
        async with db.read() as s:
            return await credits.journal_imbalance(s), await credits.book_mismatches(s)
    finally:
        await db.dispose()
