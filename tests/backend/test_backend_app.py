"""The service shell: migrations, health, errors, body limit, security headers, secrets."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from support.backend import make_settings, running
from support.net import free_port

from r3mes.backend.api.middleware import BodyLimit
from r3mes.backend.app import create_app
from r3mes.backend.db.engine import Database
from r3mes.backend.db.migrate import migrate, pending_heads
from r3mes.backend.errors import ConfigError
from r3mes.backend.keyfiles import load_or_create_secret
from r3mes.backend.settings import BackendSettings, normalize_database_url

pytestmark = pytest.mark.anyio


async def test_health_reports_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True


async def test_migrations_apply_every_head_and_are_idempotent(
    settings: BackendSettings,
) -> None:
    db = Database(settings)
    try:
        await migrate(db)
        await migrate(db)
        assert await pending_heads(db) == []
    finally:
        await db.dispose()


async def test_unknown_route_is_a_json_error(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    openai = await client.get("/v1/nope")
    assert openai.json()["error"]["type"] == "invalid_request_error"


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


async def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_body_bytes=1024)
    async with running(create_app(settings)) as client:
        big = await client.post("/v1/chat/completions", content=b"x" * 4096)
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "payload_too_large"


async def test_streamed_body_over_the_limit_is_413() -> None:
    inner = FastAPI()

    @inner.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    app = BodyLimit(inner, max_bytes=1024)

    async def chunks(n: int) -> AsyncIterator[bytes]:  # no content-length: counted as it streams
        for _ in range(n):
            yield b"y" * 512

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/echo", content=chunks(2))).json() == {"size": 1024}
        streamed = await client.post("/echo", content=chunks(8))
        assert streamed.status_code == 413


def test_secrets_are_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "backend" / "jwt.key"
    first = load_or_create_secret(path)
    assert load_or_create_secret(path) == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_secret(path)
    assert load_or_create_secret(path, "configured-secret-value") == b"configured-secret-value"
    with pytest.raises(ConfigError, match="16 characters"):
        load_or_create_secret(path, "short")


def test_settings_validate_and_normalise(tmp_path: Path) -> None:
    assert normalize_database_url("postgres://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    settings = make_settings(tmp_path)
    assert settings.is_sqlite and str(tmp_path) in settings.sqlalchemy_url
    with pytest.raises(ValueError, match="bech32|address|remes"):
        make_settings(tmp_path, admins="not-an-address")
    with pytest.raises(ValueError):
        make_settings(tmp_path, port=70000)


def test_unsupported_database_scheme_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        Database(make_settings(tmp_path, database_url="mysql://u@h/db"))


def test_list_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from r3mes.chain.crypto import SigningKey

    admin = SigningKey.generate().address
    monkeypatch.setenv("R3MES_ADMINS", f" {admin} ,")
    monkeypatch.setenv("R3MES_CORS_ORIGINS", "http://a.example,http://b.example")
    settings = BackendSettings(home=tmp_path)
    assert settings.admins == (admin,)
    assert settings.cors_origins == ("http://a.example", "http://b.example")


def test_cors_origins_must_be_exact_origins(tmp_path: Path) -> None:
    """`*` with credentialed CORS would let any site read a user's API answers: refused."""
    for bad in ("*", "http://a.example,*", "a.example", "http://a.example/path"):
        with pytest.raises(ValueError, match="origin"):
            make_settings(tmp_path, cors_origins=bad)
    settings = make_settings(tmp_path, cors_origins="https://App.example/,http://b.example:8080")
    assert settings.cors_origins == ("https://app.example", "http://b.example:8080")


async def test_cors_answers_only_listed_origins(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_origins="https://app.example")
    async with running(create_app(settings)) as client:
        ok = await client.get("/health", headers={"origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert ok.headers["access-control-allow-credentials"] == "true"
        other = await client.get(
            "/health", headers={"origin": "https://evil.example", "cookie": "r3mes_access=x"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_secret_files_race_to_one_complete_secret(tmp_path: Path) -> None:
    """Processes starting together never read a half-written (empty) secret file."""
    import threading

    for attempt in range(30):
        path = tmp_path / f"s{attempt}" / "jwt.key"
        got: list[bytes | BaseException] = []
        start = threading.Barrier(6)

        def load(
            path: Path = path,
            got: list[bytes | BaseException] = got,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            try:
                got.append(load_or_create_secret(path))
            except BaseException as exc:  # noqa: BLE001 - recorded for the assert
                got.append(exc)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(got)) == 1 and isinstance(got[0], bytes), got


def backend_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("r3mes-backend-")}


async def test_shutdown_stops_every_worker_and_the_chain_follower(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The follower of a ledger that does not answer sits in its retry pause when the app
    shuts down; afterwards nothing of the backend runs (a backend left running kept warning
    into later tests)."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(tmp_path, follow_chain=True, chain_rpc=dead)
    caplog.set_level(logging.WARNING, logger="r3mes.backend.services.chain_follower")
    app = create_app(settings)
    async with running(app):
        workers = backend_tasks()
        names = {t.get_name() for t in workers}
        assert {"r3mes-backend-chain-follower", "r3mes-backend-hold-sweeper"} <= names
        async with asyncio.timeout(60):
            while not any(dead in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
    assert all(t.done() for t in workers)
    assert backend_tasks() == set()
