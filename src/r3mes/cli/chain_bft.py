"""`r3mes chain abci | testnet | rest`: the ledger under CometBFT (many validators)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r3mes.cli.chain_shared import CliError, console, genesis_inputs

chain_app = typer.Typer(
    help="The ledger under CometBFT: the ABCI app, testnet homes, the REST gateway."
)


def _logging() -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@chain_app.command("abci")
def chain_abci(
    home: Annotated[
        Path, typer.Option("--home", help="The node's CometBFT home; the ledger lives in data/.")
    ],
    address: Annotated[
        str, typer.Option(help="Listen address CometBFT's proxy_app points at.")
    ] = "tcp://127.0.0.1:26658",
    lie_from_height: Annotated[
        int,
        typer.Option(
            "--test-lie-from-height",
            hidden=True,
            help="Test-only fault: report a wrong app hash from this height on.",
        ),
    ] = 0,
) -> None:
    """Serve the ledger as an ABCI app over CometBFT's socket protocol (until SIGTERM)."""
    import asyncio
    import signal

    from r3mes.chain.abci_server import AbciApp, AbciConfig, serve

    _logging()
    app = AbciApp(AbciConfig(home=home, lie_from_height=lie_from_height))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, address, stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        raise CliError(f"cannot listen on {address}: {exc}") from exc
    finally:
        app.close()


@chain_app.command("testnet")
def chain_testnet(
    out: Annotated[Path, typer.Option("--out", help="Folder for the node homes.")],
    validators: Annotated[int, typer.Option(min=1, max=64, help="Number of validators.")] = 4,
    chain_id: Annotated[str, typer.Option(help="Chain id.")] = "r3mes-testnet-1",
    account: Annotated[
        list[str] | None, typer.Option(help="Genesis balance ADDRESS=AMOUNT (repeatable).")
    ] = None,
    artifacts: Annotated[
        Path | None, typer.Option(help="JSON list of approved genesis artifacts.")
    ] = None,
    round_length: Annotated[int, typer.Option(help="Blocks per round.")] = 30,
    pow_difficulty: Annotated[int, typer.Option(help="SubmitGradient PoW bits.")] = 8,
    quorum: Annotated[int, typer.Option(help="Attestations that settle a submission.")] = 1,
    authority: Annotated[str, typer.Option(help="Address allowed to approve artifacts.")] = "",
    base_port: Annotated[
        int, typer.Option(help="Node i: base+10i p2p, +1 RPC, +2 ABCI (loopback).")
    ] = 26600,
    block_interval: Annotated[str, typer.Option(help="CometBFT timeout_commit.")] = "1s",
    devnet: Annotated[bool, typer.Option(help="Enable the faucet (test networks).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
) -> None:
    """Write CometBFT homes for N validators: config, genesis with the R3MES app state, keys."""
    from r3mes.chain.devnet import devnet_genesis
    from r3mes.chain.testnet import TestnetConfig, write_testnet

    balances, specs = genesis_inputs(account, artifacts)
    genesis = devnet_genesis(
        chain_id=chain_id,
        accounts=balances,
        artifacts=specs,
        round_length=round_length,
        pow_difficulty=pow_difficulty,
        attestation_quorum=quorum,
        authority=authority,
        devnet=devnet,
    )
    config = TestnetConfig(
        validators=validators, base_port=base_port, timeout_commit=block_interval
    )
    nodes = write_testnet(out, genesis, config, overwrite=overwrite)
    for node in nodes:
        console.print(
            f"{node.name}: {node.home}  rpc {node.rpc_url}  abci {node.abci_address}  "
            f"validator {node.validator_address}"
        )
    console.print(
        "start each node with `r3mes chain abci --home H --address ABCI` and "
        "`cometbft node --home H`"
    )


@chain_app.command("rest")
def chain_rest(
    rpc: Annotated[
        str, typer.Option("--rpc", help="The CometBFT node's RPC URL.")
    ] = "http://127.0.0.1:26657",
    host: Annotated[str, typer.Option(help="Listen address (keep loopback unless needed).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port of the REST routes and JSON-RPC.")] = 1317,
) -> None:
    """Serve /remes/remes/v1/ (through abci_query) and the node's JSON-RPC, devnet-shaped."""
    from r3mes.chain.gateway import GatewayConfig, serve_gateway

    _logging()
    serve_gateway(GatewayConfig(rpc_url=rpc), host=host, port=port)
