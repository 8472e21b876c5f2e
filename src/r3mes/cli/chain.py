"""`r3mes wallet | devnet | tx | query`: keys and the ledger."""

import typer

wallet_app = typer.Typer(help="Keys and addresses: create, import, list, show, export.")
devnet_app = typer.Typer(help="The embedded single-node ledger: init, start, stop, status.")
tx_app = typer.Typer(help="Sign and broadcast ledger transactions.")
query_app = typer.Typer(help="Read ledger state: rounds, tasks, submissions, nodes, artifacts.")
