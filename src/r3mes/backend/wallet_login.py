"""The client side of wallet login, for `r3mes wallet login` and `r3mes wallet sign-login`.

Asks a backend for a challenge, signs it with ADR-036 exactly as Keplr would, and exchanges
the signature for tokens. The session (tokens) is saved 0600 under `$R3MES_HOME` so later
commands can use it; the secret key never leaves this process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from r3mes.backend import adr036
from r3mes.chain.crypto import SigningKey
from r3mes.errors import R3mesError

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
SESSION_FILE = "backend-session.json"


class LoginFailed(R3mesError):
    """The backend refused the login or could not be reached."""


def login_body(key: SigningKey, message: str) -> dict[str, Any]:
    """The `POST /api/auth/login` body for `message` signed by `key` (paste into the UI)."""
    signature = adr036.sign(key, message.encode()).to_json()
    return {"message": message, **signature}


def login(
    backend_url: str, key: SigningKey, *, client: httpx.Client | None = None
) -> dict[str, Any]:
    """Challenge, sign, log in; returns the backend's token answer."""
    base = backend_url.rstrip("/")
    own = client is None
    http = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    try:
        made = _post(http, f"{base}/api/auth/challenge", {"address": key.address})
        message = made.get("message")
        if not isinstance(message, str) or f"\n{key.address}\n" not in message:
            raise LoginFailed(f"{base} answered a challenge that is not for {key.address}")
        return _post(http, f"{base}/api/auth/login", login_body(key, message))
    finally:
        if own:
            http.close()


def save_session(home: Path, backend_url: str, tokens: dict[str, Any]) -> Path:
    """Write the session to `home/backend-session.json`, readable by the owner only."""
    path = home / SESSION_FILE
    home.mkdir(parents=True, exist_ok=True)
    doc = {"backend": backend_url.rstrip("/"), **tokens}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle, indent=2)
    os.chmod(path, 0o600)
    return path


def _post(http: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = http.post(url, json=body)
    except httpx.HTTPError as exc:
        raise LoginFailed(f"cannot reach {url}: {exc}; is `r3mes backend start` running?") from exc
    try:
        doc = response.json()
    except ValueError as exc:
        raise LoginFailed(f"{url} answered {response.status_code} without JSON") from exc
    if response.status_code != 200:
        reason = doc.get("error", {}).get("message") if isinstance(doc, dict) else None
        raise LoginFailed(f"login refused ({response.status_code}): {reason or doc}")
    if not isinstance(doc, dict):
        raise LoginFailed(f"{url} answered unexpected JSON")
    return doc
