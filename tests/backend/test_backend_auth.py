"""Wallet login on SQLite and PostgreSQL: the happy path, cookies, and every attack refused
with 401 and a reason (replay, expiry, wrong domain / chain, foreign key, other bytes,
tampered and alg-none JWTs, a refresh token used twice)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from support.backend import make_settings, running

from r3mes.backend import adr036
from r3mes.backend.app import create_app
from r3mes.backend.db.engine import Database
from r3mes.backend.db.migrate import migrate
from r3mes.backend.services import auth, credits
from r3mes.backend.settings import BackendSettings
from r3mes.chain.crypto import SigningKey

pytestmark = pytest.mark.anyio

ALICE = SigningKey(secret=bytes([1]) * 32)
MALLORY = SigningKey(secret=bytes([2]) * 32)


async def challenge(client: httpx.AsyncClient, key: SigningKey = ALICE) -> dict[str, Any]:
    response = await client.post("/api/auth/challenge", json={"address": key.address})
    assert response.status_code == 200, response.text
    return dict(response.json())


def signed(message: str, key: SigningKey = ALICE, data: bytes | None = None) -> dict[str, Any]:
    sig = adr036.sign(key, message.encode() if data is None else data).to_json()
    return {"message": message, "signature": sig["signature"], "pub_key": sig["pub_key"]}


async def login(client: httpx.AsyncClient, key: SigningKey = ALICE) -> dict[str, Any]:
    made = await challenge(client, key)
    response = await client.post("/api/auth/login", json=signed(made["message"], key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert reason in response.json()["error"]["message"]


async def test_challenge_names_domain_chain_and_times(
    client: httpx.AsyncClient, settings: BackendSettings
) -> None:
    made = await challenge(client)
    assert made["domain"] == settings.domain and made["chain_id"] == settings.chain_id
    assert made["address"] == ALICE.address
    assert f"Nonce: {made['nonce']}" in made["message"]
    assert f"Chain ID: {settings.chain_id}" in made["message"]
    assert made["expires_at"] > made["issued_at"]
    assert made["message"].startswith("localhost wants you to sign in")
    bad = await client.post("/api/auth/challenge", json={"address": "cosmos1nope"})
    assert bad.status_code == 400


async def test_login_gives_tokens_and_cookies_that_work(client: httpx.AsyncClient) -> None:
    tokens = await login(client)
    assert tokens["address"] == ALICE.address
    for name in ("r3mes_access", "r3mes_refresh", "r3mes_csrf"):
        assert name in client.cookies
    saved = dict(client.cookies)
    client.cookies.clear()
    me = await client.get("/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200, me.text
    client.cookies.update(saved)
    assert me.json()["address"] == ALICE.address
    assert me.json()["available"] == 0
    # The cookie session works too; an unsafe method by cookie needs the CSRF header.
    assert (await client.get("/api/me")).status_code == 200
    no_csrf = await client.post("/api/keys", json={"name": "k"})
    assert no_csrf.status_code == 403
    with_csrf = await client.post(
        "/api/keys", json={"name": "k"}, headers={"X-CSRF-Token": client.cookies["r3mes_csrf"]}
    )
    assert with_csrf.status_code == 201, with_csrf.text


async def test_replayed_nonce_is_refused(client: httpx.AsyncClient) -> None:
    made = await challenge(client)
    body = signed(made["message"])
    assert (await client.post("/api/auth/login", json=body)).status_code == 200
    refused(await client.post("/api/auth/login", json=body), "already used")


async def test_expired_challenge_is_refused(settings: BackendSettings) -> None:
    db = Database(settings)
    await migrate(db)
    try:
        past = credits.utcnow() - timedelta(seconds=settings.challenge_ttl_s + 5)
        async with db.write() as s, s.begin():
            made = await auth.create_challenge(
                s, settings=settings, address=ALICE.address, now=past
            )
    finally:
        await db.dispose()
    async with running(create_app(settings)) as client:
        refused(await client.post("/api/auth/login", json=signed(made.message)), "expired")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [("domain", "evil.example", "domain"), ("Chain ID", "other-chain", "chain")],
)
async def test_wrong_domain_or_chain_is_refused(
    client: httpx.AsyncClient, settings: BackendSettings, field: str, value: str, reason: str
) -> None:
    made = await challenge(client)
    if field == "domain":
        message = made["message"].replace(settings.domain, value, 1)
    else:
        message = made["message"].replace(f"Chain ID: {settings.chain_id}", f"Chain ID: {value}")
    refused(await client.post("/api/auth/login", json=signed(message)), reason)


async def test_signature_by_another_key_is_refused(client: httpx.AsyncClient) -> None:
    made = await challenge(client)
    refused(
        await client.post("/api/auth/login", json=signed(made["message"], MALLORY)),
        "public key is not the key of",
    )
    # Mallory's signature presented with Alice's public key: the signature fails.
    body = signed(made["message"], MALLORY)
    body["pub_key"] = adr036.sign(ALICE, b"x").to_json()["pub_key"]
    refused(await client.post("/api/auth/login", json=body), "does not verify")


async def test_signature_over_other_bytes_is_refused(client: httpx.AsyncClient) -> None:
    made = await challenge(client)
    refused(
        await client.post("/api/auth/login", json=signed(made["message"], data=b"other bytes")),
        "does not verify",
    )
    edited = made["message"].replace("costs nothing", "costs everything")
    refused(await client.post("/api/auth/login", json=signed(edited)), "differs")


async def test_tampered_and_alg_none_jwts_are_refused(client: httpx.AsyncClient) -> None:
    tokens = await login(client)
    client.cookies.clear()
    token = tokens["access_token"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "999"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = f"{header}.{forged}.{signature}"
    refused(
        await client.get("/api/me", headers={"Authorization": f"Bearer {tampered}"}),
        "signature is invalid",
    )
    none_token = jwt.encode(claims, key="", algorithm="none")
    refused(
        await client.get("/api/me", headers={"Authorization": f"Bearer {none_token}"}),
        "algorithm must be HS256",
    )
    other_key = jwt.encode(claims, "another-secret-of-32-bytes-xxxxxxxx", algorithm="HS256")
    refused(
        await client.get("/api/me", headers={"Authorization": f"Bearer {other_key}"}),
        "signature is invalid",
    )


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    first = await login(client)
    client.cookies.clear()
    rotated = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    client.cookies.clear()
    bearer = {"Authorization": f"Bearer {second['access_token']}"}
    assert (await client.get("/api/me", headers=bearer)).status_code == 200
    refused(
        await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]}),
        "already used",
    )
    # The whole family is gone: the newest refresh token and its access token too.
    refused(
        await client.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]}),
        "revoked",
    )
    refused(await client.get("/api/me", headers=bearer), "revoked")


async def test_logout_revokes_the_session(client: httpx.AsyncClient) -> None:
    tokens = await login(client)
    csrf = client.cookies["r3mes_csrf"]
    out = await client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200
    client.cookies.clear()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    refused(await client.get("/api/me", headers=bearer), "revoked")


async def test_missing_or_malformed_credentials(client: httpx.AsyncClient) -> None:
    refused(await client.get("/api/me"), "no credentials")
    refused(await client.get("/api/me", headers={"Authorization": "Basic abc"}), "Bearer")
    refused(await client.get("/api/me", headers={"X-API-Key": "r3k_short"}), "malformed")


async def test_admin_routes_need_an_admin_session(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url=database_url, admins=(ALICE.address,))
    async with running(create_app(settings)) as client:
        await login(client, MALLORY)
        client.cookies.clear()
        mallory = (await login(client, MALLORY))["access_token"]
        alice = (await login(client, ALICE))["access_token"]
        client.cookies.clear()
        as_mallory = {"Authorization": f"Bearer {mallory}"}
        as_alice = {"Authorization": f"Bearer {alice}"}
        assert (await client.get("/api/admin/accounts", headers=as_mallory)).status_code == 403
        listed = await client.get("/api/admin/accounts", headers=as_alice)
        assert listed.status_code == 200
        target = next(a for a in listed.json()["accounts"] if a["address"] == MALLORY.address)
        grant = await client.post(
            f"/api/admin/accounts/{target['id']}/grants",
            json={"amount": 70, "reason": "beta tester"},
            headers={**as_alice, "Idempotency-Key": "g-1"},
        )
        assert grant.status_code == 201, grant.text
        again = await client.post(
            f"/api/admin/accounts/{target['id']}/grants",
            json={"amount": 70, "reason": "beta tester"},
            headers={**as_alice, "Idempotency-Key": "g-1"},
        )
        assert again.json()["journal_id"] == grant.json()["journal_id"]
        conflict = await client.post(
            f"/api/admin/accounts/{target['id']}/grants",
            json={"amount": 71},
            headers={**as_alice, "Idempotency-Key": "g-1"},
        )
        assert conflict.status_code == 409
        me = await client.get("/api/me", headers=as_mallory)
        assert me.json()["available"] == 70
        history = await client.get("/api/me/transactions", headers=as_mallory)
        assert [t["kind"] for t in history.json()["transactions"]] == ["grant"]


async def test_login_challenges_are_rate_limited_per_client_address(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, challenges_per_min=3)
    async with running(create_app(settings)) as client:
        address = SigningKey.generate().address
        answers = [
            await client.post("/api/auth/challenge", json={"address": address}) for _ in range(4)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        refused = answers[-1]
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many login challenges" in refused.json()["error"]["message"]


async def test_ids_and_cursors_beyond_the_database_range_are_4xx(
    tmp_path: Path, database_url: str
) -> None:
    """Path ids and cursors past 2**63-1 (or odd digits) are refused up front, never a 500."""
    settings = make_settings(tmp_path, database_url=database_url, admins=(ALICE.address,))
    async with running(create_app(settings)) as client:
        alice = (await login(client, ALICE))["access_token"]
        client.cookies.clear()
        as_alice = {"Authorization": f"Bearer {alice}"}
        key = (await client.post("/api/keys", json={"name": "k"}, headers=as_alice)).json()["key"]
        with_key = {"Authorization": f"Bearer {key}", "Idempotency-Key": "i-1"}
        huge = str(2**63)
        calls: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
            ("DELETE", f"/api/keys/{huge}", None, as_alice),
            ("GET", f"/api/admin/accounts/{huge}", None, as_alice),
            ("PATCH", f"/api/admin/accounts/{huge}", {"tier": "pro"}, as_alice),
            ("POST", f"/api/admin/accounts/{huge}/grants", {"amount": 1}, as_alice),
            ("POST", f"/api/admin/keys/{huge}/revoke", None, as_alice),
            ("GET", f"/api/admin/accounts?cursor={huge}", None, as_alice),
            ("POST", f"/api/credits/holds/{huge}/capture", {"amount": 1}, with_key),
            ("POST", f"/api/credits/holds/{huge}/release", None, with_key),
            ("GET", f"/api/me/transactions?cursor={huge}", None, as_alice),
            ("GET", "/api/me/transactions?cursor=99999999999999999999", None, as_alice),
            ("GET", "/api/me/transactions?cursor=%C2%B2", None, as_alice),  # superscript 2
        ]
        for method, url, body, headers in calls:
            r = await client.request(method, url, json=body, headers=headers)
            assert r.status_code in (400, 422), (method, url, r.status_code, r.text[:200])
            assert r.json()["error"]["message"]
        assert (await client.get("/api/admin/accounts/1", headers=as_alice)).status_code == 200


async def test_transactions_page_by_cursor_newest_first(client: httpx.AsyncClient) -> None:
    """`/api/me/transactions` walks the whole journal by `next_cursor`, each entry once."""
    tokens = await login(client)
    client.cookies.clear()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.db.write() as s, s.begin():
        for i in range(5):
            await credits.deposit(
                s, account_id=tokens["account_id"], amount=10 + i, idempotency_key=f"d{i}"
            )
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get("/api/me/transactions", params=params, headers=headers)).json()
        seen += [t["amount"] for t in page["transactions"]]
        assert all(sum(e["amount"] for e in t["entries"]) > 0 for t in page["transactions"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [14, 13, 12, 11, 10]
    bad = await client.get("/api/me/transactions", params={"cursor": "x"}, headers=headers)
    assert bad.status_code == 400 and "cursor" in bad.json()["error"]["message"]
