"""`r3mes backend create-admin`, `r3mes wallet login` and `r3mes wallet sign-login` against a
real `r3mes backend start` process."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from support.backend import make_settings
from support.backend_process import backend_process
from typer.testing import CliRunner

from r3mes.backend.db.accounts import Account, AdminAudit
from r3mes.backend.db.engine import Database
from r3mes.chain.crypto import SigningKey
from r3mes.cli.main import app

runner = CliRunner()
PASS = {"R3MES_PASSPHRASE": "cli-pass-123456"}
KEY = SigningKey(secret=bytes([11]) * 32)


def import_key(home: Path) -> None:
    result = runner.invoke(
        app,
        ["wallet", "import", "me", "--home", str(home), "--raw"],
        env={**PASS, "R3MES_MNEMONIC": KEY.secret.hex()},
    )
    assert result.exit_code == 0, result.output


def test_create_admin_marks_the_account_and_audits(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["backend", "create-admin", KEY.address, "--home", str(tmp_path)], env={}
    )
    assert result.exit_code == 0, result.output
    assert "is an admin" in result.output

    async def check() -> tuple[bool, list[str]]:
        db = Database(make_settings(tmp_path))
        try:
            async with db.read() as s:
                admin = await s.scalar(
                    select(Account.is_admin).where(Account.address == KEY.address)
                )
                actions = list(await s.scalars(select(AdminAudit.action)))
            return bool(admin), actions
        finally:
            await db.dispose()

    assert asyncio.run(check()) == (True, ["admin"])
    bad = runner.invoke(app, ["backend", "create-admin", "nope", "--home", str(tmp_path)])
    assert bad.exit_code != 0


@pytest.mark.slow
def test_wallet_login_and_sign_login_against_a_running_backend(tmp_path: Path) -> None:
    wallet_home = tmp_path / "wallet"
    import_key(wallet_home)
    login_args = ["wallet", "login", "--key", "me", "--home", str(wallet_home), "--backend"]
    with backend_process(tmp_path / "backend") as backend:
        result = runner.invoke(
            app,
            [
                "wallet",
                "login",
                "--key",
                "me",
                "--backend",
                backend.url,
                "--home",
                str(wallet_home),
            ],
            env=PASS,
        )
        assert result.exit_code == 0, result.output
        shown = json.loads(result.output)
        assert shown["address"] == KEY.address
        assert "access_token" not in shown
        session_file = Path(shown["session_file"])
        assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
        session = json.loads(session_file.read_text())
        me = httpx.get(
            backend.url + "/api/me",
            headers={"Authorization": f"Bearer {session['access_token']}"},
            timeout=10,
        )
        assert me.status_code == 200 and me.json()["address"] == KEY.address

        # The paste-into-the-dashboard path: sign a challenge file, post what it prints.
        made = httpx.post(
            backend.url + "/api/auth/challenge", json={"address": KEY.address}, timeout=10
        ).json()
        challenge = tmp_path / "challenge.txt"
        challenge.write_text(made["message"] + "\n")
        signed = runner.invoke(
            app,
            [
                "wallet",
                "sign-login",
                "--key",
                "me",
                "--challenge",
                str(challenge),
                "--home",
                str(wallet_home),
            ],
            env=PASS,
        )
        assert signed.exit_code == 0, signed.output
        login = httpx.post(
            backend.url + "/api/auth/login", json=json.loads(signed.output), timeout=10
        )
        assert login.status_code == 200, login.text

        # An idle connection outlives clients' 5 s keep-alive expiry (they close it first).
        assert answers_twice_on_one_connection(backend.url, idle_s=6.0)

    refused = runner.invoke(
        app,
        [*login_args, backend.url],
        env=PASS,
    )
    assert refused.exit_code != 0
    assert "cannot reach" in str(refused.exception)


def answers_twice_on_one_connection(url: str, *, idle_s: float) -> bool:
    """Two `GET /health` on one TCP connection, `idle_s` apart: both answered 200."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        reader = sock.makefile("rb")
        for i in range(2):
            if i:
                time.sleep(idle_s)
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status = reader.readline()
            if not status.startswith(b"HTTP/1.1 200"):
                return False
            length = 0
            while (line := reader.readline().strip()) != b"":
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            reader.read(length)
    return True
