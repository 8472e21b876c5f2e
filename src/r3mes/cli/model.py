"""`r3mes model ...`: the BitNet b1.58 base model (pretrain, generate, info, convert)."""

import typer

app = typer.Typer(help="The BitNet b1.58 base model: pretrain, generate, inspect, convert.")
