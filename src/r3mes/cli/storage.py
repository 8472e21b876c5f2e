"""`r3mes storage | registry`: content-addressed blocks and approved artifacts."""

import typer

storage_app = typer.Typer(help="Content-addressed storage: cid, add, get, pin, gc.")
registry_app = typer.Typer(help="Approved models, datasets and adapters: sync, list, pull, verify.")
