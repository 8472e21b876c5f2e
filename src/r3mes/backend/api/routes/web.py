"""The web dashboard: `GET /` (the page) and `GET /ui/...` (scripts, styles, vendored libraries).

The files ship inside the package (`r3mes/backend/web/`); no Node.js is needed to serve them.
Every answer carries a strict Content-Security-Policy: scripts and styles only from this
origin (no inline code), network access only back to this origin (HTTP and its websocket),
no plugins, no framing. Trusted Types are required, so no script on the page can turn a string
into HTML except through DOMPurify's policy. This router is included last in `api/main.py`:
it never shadows `/api`, `/v1` or `/ws`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response

from r3mes.backend.api.deps import SettingsDep
from r3mes.backend.errors import NotFound

router = APIRouter(tags=["dashboard"], include_in_schema=False)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
"""The only file kinds served; anything else under `web/` (licences excepted) is not an asset."""

_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*$")
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")
MAX_PATH_LENGTH = 200


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@lru_cache(maxsize=256)
def load_asset(path: str) -> Asset | None:
    """The packaged file at `path` (relative to `web/`), or None; read once per process."""
    if len(path) > MAX_PATH_LENGTH or not _SAFE_PATH.match(path):
        return None
    parts = path.split("/")
    if any(part.startswith(".") for part in parts):
        return None  # no "..", no hidden files
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    content_type = CONTENT_TYPES.get(suffix)
    if content_type is None:
        return None
    node = resources.files("r3mes.backend").joinpath("web", *parts)
    if not node.is_file():
        return None
    body = node.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body=body, content_type=content_type, etag=etag)


def content_security_policy(*, request: Request, public_url: str) -> str:
    """The page's CSP; `connect-src` names this origin's websocket explicitly for old browsers."""
    sockets = ""
    if public_url:
        parts = urlsplit(public_url)
        host, scheme = parts.netloc, parts.scheme
    else:
        host, scheme = request.headers.get("host", ""), request.url.scheme
    if host and _SAFE_HOST.match(host):
        sockets = f" {'wss' if scheme == 'https' else 'ws'}://{host}"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src 'self'{sockets}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types dompurify",
        ]
    )


def _serve(request: Request, asset: Asset, *, public_url: str) -> Response:
    headers = {
        "etag": asset.etag,
        # Files are not versioned by name: revalidate each time (a 304 costs one round trip).
        "cache-control": "no-cache",
        "content-security-policy": content_security_policy(request=request, public_url=public_url),
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["content-length"] = str(len(asset.body))
        return Response(media_type=asset.content_type, headers=headers)
    return Response(content=asset.body, media_type=asset.content_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request, settings: SettingsDep) -> Response:
    """The single page (hash routes: #/chat, #/login, #/account, #/network, #/address/...)."""
    asset = load_asset("index.html")
    if asset is None:
        raise NotFound("the dashboard is not installed with this package")
    return _serve(request, asset, public_url=settings.public_url)


@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
async def ui_asset(path: str, request: Request, settings: SettingsDep) -> Response:
    """A script, style sheet, icon or vendored library of the dashboard."""
    asset = load_asset(path)
    if asset is None:
        raise NotFound(f"no dashboard file {path!r}")
    return _serve(request, asset, public_url=settings.public_url)


@router.get("/favicon.ico")
async def favicon(request: Request, settings: SettingsDep) -> Response:
    """Browsers ask for it whatever the page says; answer with the SVG icon."""
    asset = load_asset("favicon.svg")
    if asset is None:
        raise NotFound("no icon")
    return _serve(request, asset, public_url=settings.public_url)
