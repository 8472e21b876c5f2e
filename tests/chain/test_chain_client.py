"""The ledger client is light: importing it never loads the server side."""

from __future__ import annotations

import subprocess
import sys

SERVER_MODULES = (
    "fastapi",
    "starlette",
    "torch",
    "r3mes.chain.rest",
    "r3mes.chain.rpc",
    "r3mes.chain.engine",
    "r3mes.chain.store",
    "r3mes.chain.transition",
    "r3mes.chain.state",
    "r3mes.chain.handlers",
)


def test_importing_the_client_does_not_import_the_server() -> None:
    code = (
        "import sys\n"
        "import r3mes.chain.client\n"
        f"loaded = [m for m in {SERVER_MODULES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_rest_routes_and_the_client_share_one_prefix() -> None:
    from r3mes.chain import client_types, rest

    assert rest.PREFIX is client_types.PREFIX == "/remes/remes/v1"
