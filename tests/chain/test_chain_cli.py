"""`r3mes wallet | devnet | tx | query` through Typer's runner, against a detached devnet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.net import free_port
from typer.testing import CliRunner

from r3mes.chain.errors import KeystoreError
from r3mes.cli.chain import CliError, devnet_app, query_app, tx_app, wallet_app

runner = CliRunner()
ENV = {"R3MES_PASSPHRASE": "correct horse"}


def run(app: object, args: list[str], **kw: object) -> str:
    result = runner.invoke(app, args, env=ENV, catch_exceptions=False, **kw)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return result.output


def test_wallet_commands(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path)]
    out = run(wallet_app, ["create", "alice", "--words", "12", *home])
    assert "remes1" in out and "mnemonic" not in out.split("address")[0]
    assert "alice" in run(wallet_app, ["list", *home])
    shown = json.loads(run(wallet_app, ["show", "alice", *home]))
    assert shown["address"].startswith("remes1") and "private" not in json.dumps(shown)
    with pytest.raises(CliError, match="yes-show-secret"):
        runner.invoke(wallet_app, ["export", "alice", *home], env=ENV, catch_exceptions=False)
    exported = json.loads(run(wallet_app, ["export", "alice", "--yes-show-secret", *home]))
    assert len(exported["mnemonic"].split()) == 12
    run(wallet_app, ["import", "bob", "--mnemonic", exported["mnemonic"], *home])
    assert json.loads(run(wallet_app, ["show", "bob", *home]))["address"] == shown["address"]
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        runner.invoke(
            wallet_app,
            ["export", "alice", "--yes-show-secret", *home],
            env={"R3MES_PASSPHRASE": "nope"},
            catch_exceptions=False,
        )


@pytest.mark.slow
def test_devnet_lifecycle_tx_and_queries(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path)]
    port = free_port()
    node = ["--node", f"http://127.0.0.1:{port}"]
    run(wallet_app, ["create", "me", "--words", "12", *home])
    address = json.loads(run(wallet_app, ["show", "me", *home]))["address"]
    artifacts = tmp_path / "artifacts.json"
    artifacts.write_text(
        json.dumps(
            [
                {
                    "kind": "model",
                    "id": "bitnet",
                    "version": 1,
                    "cid": "bafym",
                    "sha256": "aa" * 32,
                    "size": 10,
                }
            ]
        )
    )
    run(devnet_app, ["init", "--artifacts", str(artifacts), "--account", f"{address}=50", *home])
    run(devnet_app, ["start", "--detach", "--port", str(port), "--block-interval", "0.1", *home])
    try:
        assert json.loads(run(devnet_app, ["status", *node, *home]))["chain_id"] == "r3mes-devnet-1"
        run(tx_app, ["faucet", "--from", "me", "--amount", "500", *node, *home])
        run(
            tx_app,
            ["register-node", "--from", "me", "--role", "miner", "--stake", "20", *node, *home],
        )
        account = json.loads(run(query_app, ["account", address, *node]))
        assert account["balance"] == 530 and account["roles"] == ["miner"]
        assert (
            json.loads(run(query_app, ["artifacts", "--kind", "model", *node]))[0]["cid"] == "bafym"
        )
        assert json.loads(run(query_app, ["round", *node]))["base_model_cid"] == "bafym"
        assert json.loads(run(query_app, ["submissions", *node])) == []
        assert "address" in run(query_app, ["leaderboard", *node])
        assert json.loads(run(query_app, ["tasks", *node]))["shards"][0]["claimed_by"] is None
        assert json.loads(run(query_app, ["params", *node]))["devnet"] is True
    finally:
        assert "stopped" in run(devnet_app, ["stop", *home])


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf", "5000"])
def test_devnet_start_refuses_bad_block_intervals(tmp_path: Path, interval: str) -> None:
    from r3mes.chain.errors import ChainError

    args = ["start", "--block-interval", interval, "--home", str(tmp_path)]
    with pytest.raises(ChainError, match=r"block interval must be a number of seconds in \[0.01"):
        runner.invoke(devnet_app, args, env=ENV, catch_exceptions=False)


def test_real_commands_report_bad_input_in_one_line(tmp_path: Path) -> None:
    """Through `python -m r3mes.cli.main`, as a user runs it: no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "200"}
    base = [sys.executable, "-m", "r3mes.cli.main"]
    for args, says in [
        (["query", "params", "--node", "http://127.0.0.1:abc"], "is not valid"),
        (["devnet", "start", "--block-interval", "nan", "--home", str(tmp_path)], "[0.01, 3600"),
    ]:
        proc = subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and says in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:")
