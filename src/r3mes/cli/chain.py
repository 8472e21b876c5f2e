"""`r3mes wallet | devnet | query`: keys, the embedded ledger node, ledger state.

`r3mes tx` (sign and broadcast every ledger message) lives in chain_tx.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from r3mes.cli.chain_shared import (
    DEFAULT_NODE,
    CliError,
    HomeOpt,
    NodeOpt,
    PassOpt,
    client_of,
    console,
    genesis_inputs,
    home_of,
    keystore_of,
    print_json,
)
from r3mes.cli.chain_tx import tx_app as tx_app
from r3mes.errors import R3mesError

__all__ = ["CliError", "devnet_app", "query_app", "tx_app", "wallet_app"]

wallet_app = typer.Typer(
    help="Keys and addresses: create, import, list, show, export; log in to a backend."
)
devnet_app = typer.Typer(help="The embedded single-node ledger: init, start, stop, status.")
query_app = typer.Typer(help="Read ledger state: rounds, tasks, submissions, nodes, artifacts.")

# -- wallet ---------------------------------------------------------------------------


@wallet_app.command("create")
def wallet_create(
    name: str,
    passphrase: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="R3MES_PASSPHRASE",
            help="Passphrase that encrypts the key file.",
        ),
    ],
    words: Annotated[int, typer.Option(help="Mnemonic length: 12, 15, 18, 21 or 24.")] = 24,
    show_mnemonic: Annotated[bool, typer.Option(help="Print the new mnemonic once.")] = False,
    home: HomeOpt = None,
) -> None:
    """Create a new key from a fresh BIP39 mnemonic and store it encrypted."""
    info, mnemonic = keystore_of(home).create(name, passphrase=passphrase, words=words)
    console.print(f"created key [bold]{info.name}[/] address [green]{info.address}[/]")
    if show_mnemonic:
        console.print(f"mnemonic (write it down, never share it): {mnemonic}")
    else:
        console.print("back up its mnemonic with `r3mes wallet export NAME --yes-show-secret`")


@wallet_app.command("import")
def wallet_import(
    name: str,
    passphrase: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="R3MES_PASSPHRASE",
            help="Passphrase that encrypts the key file.",
        ),
    ],
    mnemonic: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            envvar="R3MES_MNEMONIC",
            help="BIP39 mnemonic (or a 64-hex private key with --raw).",
        ),
    ],
    raw: Annotated[bool, typer.Option(help="Treat the secret as a raw hex private key.")] = False,
    home: HomeOpt = None,
) -> None:
    """Import a key from its mnemonic (m/44'/118'/0'/0/0) or a raw private key."""
    store = keystore_of(home)
    if raw:
        info = store.import_secret(name, secret_hex=mnemonic, passphrase=passphrase)
    else:
        info = store.import_mnemonic(name, mnemonic=mnemonic, passphrase=passphrase)
    console.print(f"imported key [bold]{info.name}[/] address [green]{info.address}[/]")


@wallet_app.command("list")
def wallet_list(home: HomeOpt = None) -> None:
    """List stored keys (names and addresses only)."""
    table = Table("name", "address")
    for info in keystore_of(home).list():
        table.add_row(info.name, info.address)
    console.print(table)


@wallet_app.command("show")
def wallet_show(name: str, home: HomeOpt = None) -> None:
    """Show a key's address and public key (no secret)."""
    info = keystore_of(home).show(name)
    print_json({"name": info.name, "address": info.address, "pubkey": info.pubkey_hex})


@wallet_app.command("export")
def wallet_export(
    name: str,
    passphrase: PassOpt,
    yes_show_secret: Annotated[
        bool, typer.Option("--yes-show-secret", help="Required: print the secret key.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Print a key's mnemonic and private key (requires --yes-show-secret)."""
    if not yes_show_secret:
        raise CliError("export prints secrets; re-run with --yes-show-secret if you mean it")
    exported = keystore_of(home).export(name, passphrase=passphrase)
    print_json(
        {
            "address": exported.info.address,
            "mnemonic": exported.mnemonic,
            "private_key_hex": exported.secret_hex,
        }
    )


@wallet_app.command("login")
def wallet_login(
    key: Annotated[str, typer.Option("--key", help="Keystore key to log in with.")],
    passphrase: PassOpt,
    backend: Annotated[
        str, typer.Option("--backend", envvar="R3MES_BACKEND_URL", help="The backend's URL.")
    ] = "http://127.0.0.1:8080",
    show_tokens: Annotated[
        bool, typer.Option("--show-tokens", help="Also print the access and refresh tokens.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Log in to an R3MES backend with a wallet key (ADR-036); saves the session 0600."""
    from r3mes.backend import wallet_login

    signing_key = keystore_of(home).load(key, passphrase=passphrase)
    tokens = wallet_login.login(backend, signing_key)
    saved = wallet_login.save_session(home_of(home).root, backend, tokens)
    shown = {k: tokens.get(k) for k in ("address", "account_id", "expires_at")}
    if show_tokens:
        shown |= {k: tokens.get(k) for k in ("access_token", "refresh_token")}
    print_json({**shown, "session_file": str(saved)})


@wallet_app.command("sign-login")
def wallet_sign_login(
    key: Annotated[str, typer.Option("--key", help="Keystore key to sign with.")],
    passphrase: PassOpt,
    challenge: Annotated[
        Path,
        typer.Option(
            "--challenge",
            help="File holding the challenge message the dashboard shows ('-': stdin).",
        ),
    ],
    home: HomeOpt = None,
) -> None:
    """Sign a login challenge (ADR-036) and print the JSON to paste into the dashboard."""
    import sys

    from r3mes.backend import wallet_login

    message = sys.stdin.read() if str(challenge) == "-" else challenge.read_text()
    signing_key = keystore_of(home).load(key, passphrase=passphrase)
    print_json(wallet_login.login_body(signing_key, message.rstrip("\n")))


# -- devnet ---------------------------------------------------------------------------


@devnet_app.command("init")
def devnet_init(
    chain_id: Annotated[str, typer.Option(help="Chain id.")] = "r3mes-devnet-1",
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
    overwrite: Annotated[bool, typer.Option(help="Delete an existing different chain.")] = False,
    home: HomeOpt = None,
) -> None:
    """Write a devnet genesis (faucet enabled) and create the chain store."""
    from r3mes.chain.devnet import devnet_genesis, init_devnet

    balances, specs = genesis_inputs(account, artifacts)
    genesis = devnet_genesis(
        chain_id=chain_id,
        accounts=balances,
        artifacts=specs,
        round_length=round_length,
        pow_difficulty=pow_difficulty,
        attestation_quorum=quorum,
        authority=authority,
    )
    path = init_devnet(home_of(home), genesis, overwrite=overwrite)
    console.print(f"devnet [bold]{chain_id}[/] initialised: {path}")


@devnet_app.command("start")
def devnet_start(
    host: Annotated[
        str, typer.Option(help="Listen address (keep loopback unless needed).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="RPC/REST port.")] = 26657,
    block_interval: Annotated[
        float, typer.Option(help="Seconds between blocks, in [0.01, 3600].")
    ] = 1.0,
    detach: Annotated[bool, typer.Option(help="Run in the background.")] = False,
    home: HomeOpt = None,
) -> None:
    """Run the devnet node (foreground by default; --detach to background it)."""
    from r3mes.chain.devnet import DevnetConfig, DevnetNode, spawn_devnet

    h = home_of(home)
    config = DevnetConfig(host=host, port=port, block_interval_s=block_interval)
    if not detach:
        import logging

        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        DevnetNode(h, config).serve()
        return
    proc = spawn_devnet(h, config)
    url = f"http://{host}:{port}"
    try:
        client_of(url).wait_ready(timeout_s=60, alive=lambda: proc.poll() is None)
    except R3mesError as exc:
        if proc.poll() is not None:
            raise CliError(
                f"devnet exited (code {proc.returncode}); see {h.logs / 'devnet.log'}"
            ) from exc
        raise CliError(f"devnet did not answer on {url}; see {h.logs / 'devnet.log'}") from exc
    console.print(f"devnet running in the background (pid {proc.pid}) at {url}")


@devnet_app.command("stop")
def devnet_stop(home: HomeOpt = None) -> None:
    """Stop a devnet started in this home (SIGTERM, then wait)."""
    from r3mes.chain.devnet import stop_devnet

    pid = stop_devnet(home_of(home))
    console.print(
        "no devnet is running in this home" if pid is None else f"devnet (pid {pid}) stopped"
    )


@devnet_app.command("status")
def devnet_status(node: NodeOpt = DEFAULT_NODE, home: HomeOpt = None) -> None:
    """Show the devnet process and its latest block."""
    from r3mes.chain.devnet import running_devnet

    info = running_devnet(home_of(home))
    url = info["url"] if info else node
    status = client_of(url).status()
    print_json({"pid": info["pid"] if info else None, "url": url, **status.__dict__})


# -- query ----------------------------------------------------------------------------


@query_app.command("round")
def query_round(
    number: Annotated[int, typer.Argument(min=0, help="Round number; 0 = current.")] = 0,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """Show a training round (current by default)."""
    with client_of(node) as c:
        print_json((c.round(number) if number else c.current_round()).__dict__)


@query_app.command("account")
def query_account(address: str, node: NodeOpt = DEFAULT_NODE) -> None:
    """Show an account: balance, sequence, reputation, tier."""
    with client_of(node) as c:
        print_json(c.account(address).__dict__)


@query_app.command("stake")
def query_stake(address: str, node: NodeOpt = DEFAULT_NODE) -> None:
    """Show an address's stake: bonded per role, unbonding (still slashable) and total."""
    with client_of(node) as c:
        print_json(c.stake(address))


@query_app.command("submissions")
def query_submissions(
    round_number: Annotated[
        int | None, typer.Option("--round", min=1, help="Only this round (>= 1).")
    ] = None,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """List gradient submissions and their attestations."""
    with client_of(node) as c:
        print_json([s.__dict__ for s in c.submissions(round_number)])


@query_app.command("artifacts")
def query_artifacts(
    kind: Annotated[str | None, typer.Option(help="model, dataset or adapter.")] = None,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """List approved artifacts."""
    with client_of(node) as c:
        print_json([a.to_ledger() for a in c.approved_artifacts(kind)])


@query_app.command("leaderboard")
def query_leaderboard(
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 20, node: NodeOpt = DEFAULT_NODE
) -> None:
    """Top accounts by reputation."""
    table = Table("#", "address", "reputation", "tier", "earned", "verified")
    with client_of(node) as c:
        for e in c.leaderboard(limit):
            table.add_row(
                str(e.rank),
                e.address,
                str(e.reputation),
                e.tier,
                str(e.earned),
                str(e.verified_submissions),
            )
    console.print(table)


@query_app.command("nodes")
def query_nodes(
    role: Annotated[str | None, typer.Option(help="Filter by role.")] = None,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """List active registered nodes."""
    with client_of(node) as c:
        print_json([n.__dict__ for n in c.nodes(role)])


@query_app.command("tasks")
def query_tasks(
    number: Annotated[int, typer.Argument(min=0, help="Round number; 0 = current.")] = 0,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """Show a round's task pool: each shard and who claimed it."""
    with client_of(node) as c:
        print_json(c.tasks(number or None))


@query_app.command("params")
def query_params(node: NodeOpt = DEFAULT_NODE) -> None:
    """Show the chain's consensus parameters."""
    with client_of(node) as c:
        print_json(c.params().__dict__)
