"""What the wallet, devnet, tx and query commands share: options, errors, key and client."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from r3mes.errors import R3mesError

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.crypto import SigningKey
    from r3mes.chain.keystore import Keystore
    from r3mes.chain.msgs import ArtifactSpec
    from r3mes.paths import Home

console = Console()

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="R3MES home (default $R3MES_HOME or ~/.r3mes).")
]
NodeOpt = Annotated[
    str,
    typer.Option("--node", envvar="R3MES_CHAIN_RPC", help="Ledger RPC URL."),
]
PassOpt = Annotated[
    str,
    typer.Option(
        prompt=True, hide_input=True, envvar="R3MES_PASSPHRASE", help="Keystore passphrase."
    ),
]
DEFAULT_NODE = "http://127.0.0.1:26657"


class CliError(R3mesError):
    """A command-line usage problem, with what to do about it."""


def home_of(home: Path | None) -> Home:
    from r3mes.paths import Home

    return Home.from_env(home, environ=os.environ)


def keystore_of(home: Path | None) -> Keystore:
    from r3mes.chain.keystore import Keystore

    return Keystore(home_of(home).keys)


def client_of(node: str) -> BlockchainClient:
    from r3mes.chain.client import BlockchainClient

    return BlockchainClient(node)


def load_key(home: Path | None, name: str, passphrase: str) -> SigningKey:
    return keystore_of(home).load(name, passphrase=passphrase)


def print_json(doc: Any) -> None:
    console.print_json(json.dumps(doc, default=str))


def genesis_inputs(
    accounts: list[str] | None, artifacts: Path | None
) -> tuple[dict[str, int], list[ArtifactSpec]]:
    """`--account ADDRESS=AMOUNT` balances and the `--artifacts` JSON list, checked."""
    from r3mes.chain.genesis import artifact_from_dict

    balances: dict[str, int] = {}
    for item in accounts or []:
        address, _, amount = item.partition("=")
        if not amount.isdigit():
            raise CliError(f"--account {item!r} must look like remes1...=1000")
        balances[address] = int(amount)
    specs: list[ArtifactSpec] = []
    if artifacts is not None:
        try:
            specs = [artifact_from_dict(d) for d in json.loads(artifacts.read_text())]
        except (OSError, ValueError, TypeError) as exc:
            raise CliError(f"cannot read artifacts file {artifacts}: {exc}") from exc
    return balances, specs
