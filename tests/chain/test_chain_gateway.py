"""`r3mes chain rest` without a node behind it: typed errors, never a hang; SIGTERM exits 0.

The gateway over a real CometBFT node is tested in test_chain_cometbft.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
from support.net import free_port

from r3mes.chain.errors import ChainError
from r3mes.chain.gateway import GatewayConfig


def test_config_is_checked() -> None:
    with pytest.raises(ChainError, match="http"):
        GatewayConfig(rpc_url="127.0.0.1:26657")
    with pytest.raises(ChainError):
        GatewayConfig(rpc_url="http://127.0.0.1:26657", timeout_s=0)


def test_a_gateway_without_its_node_answers_errors_and_stops_cleanly() -> None:
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    cmd = [sys.executable, "-m", "r3mes.cli.main", "chain", "rest"]
    proc = subprocess.Popen([*cmd, "--rpc", f"http://127.0.0.1:{dead}", "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(300):
                try:
                    http.get("/health")
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, "the gateway exited"
                    time.sleep(0.1)
            body = {"jsonrpc": "2.0", "id": 7, "method": "status", "params": {}}
            down = http.post("/", json=body)
            assert down.status_code == 502 and down.json()["id"] == 7
            assert "unreachable" in down.json()["error"]["data"]
            assert http.get("/remes/remes/v1/params").status_code == 502
            assert http.get("/status").status_code == 502
            assert http.post("/", content=b"{not json").status_code == 400
            assert http.post("/", json=[1]).status_code == 400
            bad_round = http.get("/remes/remes/v1/rounds/0")
            assert bad_round.status_code == 400 and "round" in bad_round.text
            bad_sim = http.post("/", json={"id": 1, "method": "simulate_tx", "params": {"tx": "!"}})
            assert bad_sim.status_code == 200 and "base64" in bad_sim.json()["error"]["data"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
