"""A prepared `r3mes up`-style home with its devnet running in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r3mes.chain.devnet import DevnetConfig, DevnetNode
from r3mes.node.localnet.setup import NetworkSpec, ensure_keys, prepare_genesis
from r3mes.paths import Home
from support.net import free_port


def tiny_spec(root: Path, **overrides: Any) -> NetworkSpec:
    """A one-miner local network on the tiny model, 10-block rounds, no serving node;
    `overrides` are `NetworkSpec` fields."""
    fields: dict[str, Any] = {
        "miners": 1,
        "round_blocks": 10,
        "serving": False,
        "base_model": "tiny",
        "dataset_chars": 40_000,
    }
    return NetworkSpec(home=Home(root=root), **{**fields, **overrides})


@contextmanager
def running_devnet(
    spec: NetworkSpec, *, block_interval_s: float = 0.5
) -> Iterator[tuple[Home, str]]:
    """Keys, genesis artifacts and a devnet for `spec`; yields (home, RPC URL)."""
    prepare_genesis(spec, ensure_keys(spec))
    port = free_port()
    node = DevnetNode(spec.home, DevnetConfig(port=port, block_interval_s=block_interval_s))
    node.start()
    try:
        yield spec.home, f"http://127.0.0.1:{port}"
    finally:
        node.stop()
