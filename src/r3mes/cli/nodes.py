"""`r3mes up | down | miner | validator | proposer`: the network's roles."""

import typer


def register(app: typer.Typer) -> None:
    """Mount the role commands on the root app."""
