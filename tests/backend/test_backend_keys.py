"""API keys: shown once, HMAC-stored, both headers, scopes, limits, expiry, and a revoke that
holds on the very next request even where keys are cached (memory and Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from support.backend import fresh_postgres_database, make_settings, running

from r3mes.backend import adr036
from r3mes.backend.app import create_app
from r3mes.backend.db.accounts import ApiKey
from r3mes.backend.services import credits, keys
from r3mes.chain.crypto import SigningKey

pytestmark = pytest.mark.anyio

OWNER = SigningKey(secret=bytes([3]) * 32)


async def session(client: httpx.AsyncClient, key: SigningKey = OWNER) -> dict[str, str]:
    made = (await client.post("/api/auth/challenge", json={"address": key.address})).json()
    sig = adr036.sign(key, made["message"].encode()).to_json()
    response = await client.post("/api/auth/login", json={"message": made["message"], **sig})
    assert response.status_code == 200, response.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def new_key(client: httpx.AsyncClient, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/api/keys", json={"name": "laptop", **body}, headers=auth)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_key_is_shown_once_and_stored_as_hmac(client: httpx.AsyncClient) -> None:
    auth = await session(client)
    created = await new_key(client, auth)
    key = created["key"]
    assert key.startswith("r3k_") and created["prefix"] == key[: len(created["prefix"])]
    assert sorted(created["scopes"]) == ["chat", "read"]
    listed = (await client.get("/api/keys", headers=auth)).json()
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.db.read() as s:
        row = await s.scalar(select(ApiKey).where(ApiKey.id == created["id"]))
    assert row is not None and key not in (row.secret_hash, row.lookup_id)
    assert row.secret_hash == keys.key_hash(runtime.key_pepper, key)


async def test_both_headers_authenticate_and_wrong_secrets_do_not(
    client: httpx.AsyncClient,
) -> None:
    key = (await new_key(client, await session(client)))["key"]
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        me = await client.get("/api/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["key_id"] is not None
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    response = await client.get("/api/me", headers={"X-API-Key": wrong})
    assert response.status_code == 401
    assert "not recognised" in response.json()["error"]["message"]


async def test_scopes_limit_what_a_key_can_do(client: httpx.AsyncClient) -> None:
    auth = await session(client)
    chat_only = (await new_key(client, auth, scopes=["chat"]))["key"]
    response = await client.get("/api/me", headers={"X-API-Key": chat_only})
    assert response.status_code == 403 and "read" in response.json()["error"]["message"]
    reader = (await new_key(client, auth, name="r", scopes=["read"]))["key"]
    assert (await client.get("/api/me", headers={"X-API-Key": reader})).status_code == 200
    # Keys cannot manage keys: that needs a wallet session.
    assert (await client.get("/api/keys", headers={"X-API-Key": reader})).status_code == 403
    bad = await client.post("/api/keys", json={"name": "x", "scopes": ["admin"]}, headers=auth)
    assert bad.status_code == 400


async def test_key_limit_per_account(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url=database_url, max_keys_per_account=2)
    async with running(create_app(settings)) as client:
        auth = await session(client)
        first = await new_key(client, auth)
        await new_key(client, auth)
        third = await client.post("/api/keys", json={"name": "3"}, headers=auth)
        assert third.status_code == 409 and "revoke one" in third.json()["error"]["message"]
        await client.delete(f"/api/keys/{first['id']}", headers=auth)
        await new_key(client, auth)


async def test_expired_key_is_refused(client: httpx.AsyncClient) -> None:
    auth = await session(client)
    soon = credits.utcnow() + timedelta(seconds=1)
    created = await new_key(client, auth, expires_at=soon.isoformat())
    runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.db.write() as s, s.begin():
        row = await s.get(ApiKey, created["id"])
        row.expires_at = credits.utcnow() - timedelta(seconds=1)
    await keys.key_cache(runtime).drop(created["prefix"].removeprefix("r3k_"))
    response = await client.get("/api/me", headers={"X-API-Key": created["key"]})
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


async def revoke_holds_on_next_request(
    owner: httpx.AsyncClient, other: httpx.AsyncClient, app: FastAPI
) -> None:
    auth = await session(owner)
    created = await new_key(owner, auth)
    headers = {"X-API-Key": created["key"]}
    for c in (owner, other):
        assert (await c.get("/api/me", headers=headers)).status_code == 200
    cache = keys.key_cache(app.state.runtime)
    lookup = created["prefix"].removeprefix("r3k_")
    assert await cache.get(lookup) is not None, "the key should be cached after a request"
    revoked = await owner.delete(f"/api/keys/{created['id']}", headers=auth)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    for c in (owner, other):
        response = await c.get("/api/me", headers=headers)
        assert response.status_code == 401
        assert "revoked" in response.json()["error"]["message"]
    async with owner.stream("GET", "/api/keys", headers=auth) as listed:
        assert listed.status_code == 200
        body = await listed.aread()
    assert created["key"].encode() not in body


async def test_revoked_key_fails_next_request_with_the_memory_cache(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        await revoke_holds_on_next_request(client, client, app)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


async def test_revoked_key_fails_next_request_in_every_process_with_redis(
    tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Two backends share one PostgreSQL and one Redis: a revoke in one holds in the other."""
    common = {"database_url": postgres_url, "redis_url": redis_url, "redis_prefix": redis_prefix}
    app_a = create_app(make_settings(tmp_path / "a", **common))
    app_b = create_app(make_settings(tmp_path / "b", **common))
    async with running(app_a) as a, running(app_b) as b:
        await revoke_holds_on_next_request(a, b, app_a)


async def test_no_token_or_key_reaches_the_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    made = (await client.post("/api/auth/challenge", json={"address": OWNER.address})).json()
    sig = adr036.sign(OWNER, made["message"].encode()).to_json()
    tokens = (await client.post("/api/auth/login", json={"message": made["message"], **sig})).json()
    client.cookies.clear()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    key = (await new_key(client, auth))["key"]
    await client.get("/api/me", headers={"X-API-Key": key})
    await client.get("/api/me", headers={"X-API-Key": key[:-1] + "x"})
    await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    logged = caplog.text
    # the key's secret is all after "r3k_<lookup>_" (it may hold "_" itself: token_urlsafe)
    secret = key.split("_", 2)[2]
    assert len(secret) >= 40
    secrets = [tokens["access_token"], tokens["refresh_token"], key, secret]
    assert logged  # something was logged, and none of it is a secret
    assert not [s for s in secrets if s in logged]


def test_credentials_in_query_strings_are_redacted_from_server_logs(tmp_path: Path) -> None:
    """uvicorn logs each request line and websocket handshake with its query string; an API
    key or token passed as `?token=` (the explorer websocket accepts one) must not reach the
    logs."""
    import logging

    from support.chat import BackendServer

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    server = BackendServer(make_settings(tmp_path)).start()
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.INFO)
            lg.addHandler(handler)
        secret = "r3k_" + "s3cr3t" * 8
        with httpx.Client(base_url=server.url, timeout=10) as c:
            c.get(f"/api/me?token={secret}&x=1")
            c.get(f"/api/me?access_token={secret}")
            c.get(f"/api/me?a=1&api_key={secret}")
        # the websocket handshake line, as uvicorn's websocket protocol logs it
        logging.getLogger("uvicorn.error").info(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/ws/account?token={secret}"
        )
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        server.stop()
    joined = "\n".join(records)
    assert "/api/me?token=" in joined and "WebSocket /ws/account?token=" in joined, joined
    assert "s3cr3t" not in joined, joined
