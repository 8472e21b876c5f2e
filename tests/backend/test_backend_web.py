"""`api/routes/web.py`: the dashboard's files, their CSP, caching, and what is never served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from support.backend import make_settings, running

from r3mes.backend.api.routes.web import load_asset
from r3mes.backend.app import create_app

pytestmark = pytest.mark.anyio

WEB = Path(__file__).parents[2] / "src" / "r3mes" / "backend" / "web"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(make_settings(tmp_path), start_workers=False)) as client:
        yield client


async def test_index_and_assets_carry_a_strict_csp(web: httpx.AsyncClient) -> None:
    for path in ("/", "/ui/js/main.js", "/ui/app.css", "/ui/vendor/purify.es.mjs"):
        response = await web.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "connect-src 'self' ws://testserver" in csp
        assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "require-trusted-types-for 'script'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-frame-options"] == "DENY"
    page = await web.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert b'<script type="module" src="/ui/js/main.js">' in page.content
    assert b"<script>" not in page.content and b" style=" not in page.content
    script = await web.get("/ui/js/main.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.content == (WEB / "js" / "main.js").read_bytes()


async def test_etag_revalidation_and_head(web: httpx.AsyncClient) -> None:
    first = await web.get("/ui/app.css")
    again = await web.get("/ui/app.css", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = await web.head("/ui/app.css")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(first.content)


async def test_nothing_outside_the_web_folder_is_served(web: httpx.AsyncClient) -> None:
    for path in (
        "/ui/../settings.py",
        "/ui/..%2fsettings.py",
        "/ui/%2e%2e/app.py",
        "/ui/.hidden",
        "/ui/js/../../settings.py",
        "/ui/vendor/licenses/marked.LICENSE.txt.bak",
        "/ui/js/missing.js",
        "/ui/" + "a/" * 150 + "x.js",
    ):
        response = await web.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert load_asset("../app.py") is None
    assert load_asset("js/main.py") is None  # not an asset type


async def test_dashboard_never_shadows_the_api(web: httpx.AsyncClient) -> None:
    health = await web.get("/health")
    assert health.headers["content-type"].startswith("application/json")
    assert "content-security-policy" not in health.headers
    missing = await web.get("/api/no-such-route")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    models = await web.get("/v1/models")
    assert models.status_code == 401  # the chat API, not the page


async def test_public_url_decides_the_websocket_origin(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, public_url="https://chat.example.org")
    async with running(create_app(settings, start_workers=False)) as client:
        csp = (await client.get("/")).headers["content-security-policy"]
    assert "connect-src 'self' wss://chat.example.org;" in csp
