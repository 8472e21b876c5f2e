"""An independent ADR-036 signer (cosmjs from npm, run by node) logs in to the backend.

`tests/backend/cosmjs/` pins @cosmjs/amino in package.json + package-lock.json; the fixture
runs `npm ci` when node_modules is missing. Keplr's `signArbitrary` builds the same amino
sign doc that `sign.mjs` builds with cosmjs, so a backend that accepts this accepts Keplr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from r3mes.backend import adr036
from r3mes.chain.crypto import SigningKey

pytestmark = pytest.mark.anyio

HERE = Path(__file__).with_name("cosmjs")
KEY = SigningKey(secret=bytes.fromhex("4c" * 32))


@pytest.fixture(scope="module")
def node_signer() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed for the cosmjs ADR-036 test"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if not (HERE / "node_modules" / "@cosmjs" / "amino").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=300)
    return HERE / "sign.mjs"


def cosmjs_sign(script: Path, message: str, key: SigningKey = KEY) -> dict[str, object]:
    done = subprocess.run(
        ["node", str(script), key.secret.hex(), "remes"],
        input=message.encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(done.stdout))


async def test_cosmjs_signature_logs_in(client: httpx.AsyncClient, node_signer: Path) -> None:
    made = (await client.post("/api/auth/challenge", json={"address": KEY.address})).json()
    signed = cosmjs_sign(node_signer, made["message"])
    assert signed["address"] == KEY.address
    body = {
        "message": made["message"],
        "pub_key": signed["pub_key"],
        "signature": signed["signature"],
    }
    response = await client.post("/api/auth/login", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["address"] == KEY.address


@pytest.mark.parametrize("message", ["plain", "tags <b>&amp;</b> escaped", "naïve ✓ \n lines"])
def test_python_signer_matches_cosmjs_byte_for_byte(node_signer: Path, message: str) -> None:
    """RFC 6979 signatures are deterministic: same sign bytes, same signature."""
    ours = adr036.sign(KEY, message.encode()).to_json()
    theirs = cosmjs_sign(node_signer, message)
    assert ours["pub_key"] == theirs["pub_key"]
    assert ours["signature"] == theirs["signature"]
