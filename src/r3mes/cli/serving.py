"""`r3mes serving ...`: the multi-LoRA inference server."""

import typer

app = typer.Typer(help="Multi-LoRA serving with an OpenAI-compatible API.")
