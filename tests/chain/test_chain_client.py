"""The ledger client is light: importing it never loads the server side."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from chain.chain_harness import key
from support.net import free_port

from r3mes.chain.client import BlockchainClient
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.errors import ClientError
from r3mes.paths import Home

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

    # rest imports PREFIX from client_types (no re-export): read its namespace.
    assert vars(rest)["PREFIX"] is client_types.PREFIX == "/remes/remes/v1"


def test_waiting_for_a_ledger_that_is_starting_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = Home(root=tmp_path)
    init_devnet(home, devnet_genesis(accounts={key(1).address: 10}))
    port = free_port()
    node = DevnetNode(home, DevnetConfig(port=port, block_interval_s=0.1))
    later = threading.Timer(0.6, node.start)
    later.start()
    try:
        with (
            caplog.at_level(logging.INFO, logger="r3mes.chain.client"),
            BlockchainClient(f"http://127.0.0.1:{port}", timeout_s=2) as client,
        ):
            status = client.wait_ready(timeout_s=30)
        assert status.chain_id == "r3mes-devnet-1"
        # connection refused while it started: not worth a word from the client (records of
        # other loggers, e.g. a backend thread another test left running, are not its)
        assert [r for r in caplog.records if r.name == "r3mes.chain.client"] == []
    finally:
        later.join()
        node.stop()


def test_waiting_gives_up_with_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    with BlockchainClient(f"http://127.0.0.1:{port}", timeout_s=1) as client:
        with pytest.raises(ClientError, match="did not answer within 0.3 s"):
            client.wait_ready(timeout_s=0.3, patience_s=0.1, poll_s=0.05)
        assert "still waiting for the ledger" in caplog.text
        with pytest.raises(ClientError, match="stopped before it answered"):
            client.wait_ready(timeout_s=5, alive=lambda: False)
