"""Ledger throughput: committed signed tx/s through the devnet vs signature checks alone,
and empty-block commit latency on a large state vs a small one (the app hash and the store
must cost what a block changes, not what the state holds).

Run: .venv/bin/python -m benchmarks.chain [--quick]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from r3mes.chain import bech32
from r3mes.chain.crypto import ADDRESS_PREFIX, SigningKey
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.engine import DevnetEngine, EngineConfig
from r3mes.chain.msgs import TransferCredits
from r3mes.chain.store import BlockStore
from r3mes.chain.tx import build_tx, decode_tx
from r3mes.paths import Home

SENDERS = [SigningKey(secret=(i + 1).to_bytes(32, "big")) for i in range(8)]
CHAIN_ID = "r3mes-devnet-1"


def emit(
    figure: str, value: float, unit: str, *, baseline: float | None = None, goal: str = ""
) -> None:
    ratio = round(value / baseline, 4) if baseline else None
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 3),
                "unit": unit,
                "baseline": None if baseline is None else round(baseline, 3),
                "ratio": ratio,
                "goal": goal,
            }
        )
    )


def signed_transfers(n: int, numbers: dict[str, int]) -> list[bytes]:
    """n transfers spread over the senders, sequences 0.. per sender (signing not timed)."""
    txs = []
    for i in range(n):
        key = SENDERS[i % len(SENDERS)]
        msg = TransferCredits(creator=key.address, to=SENDERS[0].address, amount=1)
        txs.append(
            build_tx(
                [msg],
                key=key,
                chain_id=CHAIN_ID,
                account_number=numbers[key.address],
                sequence=i // len(SENDERS),
            )
        )
    return txs


def verify_only_rate(txs: list[bytes], numbers: dict[str, int]) -> float:
    start = time.perf_counter()
    for raw in txs:
        tx = decode_tx(raw)
        assert tx.verify(chain_id=CHAIN_ID, account_number=numbers[tx.signer])
    return len(txs) / (time.perf_counter() - start)


def engine_rate(home: Home, txs: list[bytes]) -> tuple[float, list[float]]:
    """Submit every tx (check_tx) and produce blocks until all are committed."""
    engine = DevnetEngine(BlockStore(home.chain / "chain.db"), EngineConfig())
    latencies = []
    start = time.perf_counter()
    for raw in txs:
        assert engine.submit(raw).code == 0
    committed = 0
    while committed < len(txs):
        t0 = time.perf_counter()
        result = engine.produce_block()
        latencies.append(time.perf_counter() - t0)
        committed += sum(1 for r in result.tx_results if r.code == 0)
    rate = len(txs) / (time.perf_counter() - start)
    empty = []
    for _ in range(10):
        t0 = time.perf_counter()
        engine.produce_block()
        empty.append(time.perf_counter() - t0)
    engine.store.close()
    return rate, [statistics.median(latencies), statistics.median(empty)]


def rpc_rate(home: Home, txs: list[bytes], port: int) -> float:
    """Through the HTTP RPC: broadcast_tx_sync every tx, wait for the last one's block."""
    import base64

    import httpx

    node = DevnetNode(home, DevnetConfig(port=port, block_interval_s=0.2))
    node.start()
    try:
        with httpx.Client(base_url=node.url, timeout=30) as http:
            start = time.perf_counter()
            for raw in txs:
                res = http.get("/broadcast_tx_sync", params={"tx": base64.b64encode(raw).decode()})
                assert res.json()["result"]["code"] == 0, res.text
            node.engine.wait_for_height(node.engine.state.height + 1, 30)
            while node.engine.mempool_size():
                node.engine.wait_for_height(node.engine.state.height + 1, 30)
            return len(txs) / (time.perf_counter() - start)
    finally:
        node.stop()


def empty_block_latencies(homes: list[Home], blocks: int = 30) -> list[float]:
    """Median seconds to produce and commit an empty block on each chain in `homes`.

    The chains take turns block by block, so disk and machine noise (fsync times vary
    several-fold here) hit them alike and their ratio is meaningful.
    """
    engines = [DevnetEngine(BlockStore(h.chain / "chain.db"), EngineConfig()) for h in homes]
    times: list[list[float]] = [[] for _ in engines]
    for i in range(blocks + 5):
        for engine, spent in zip(engines, times, strict=True):
            t0 = time.perf_counter()
            engine.produce_block()
            if i >= 5:  # the first blocks open round 1 and checkpoint the genesis WAL
                spent.append(time.perf_counter() - t0)
    for engine in engines:
        engine.store.close()
    return [statistics.median(spent) for spent in times]


def filler_accounts(n: int) -> dict[str, int]:
    """n distinct funded addresses (not keys: nobody signs for them)."""
    return {bech32.encode(ADDRESS_PREFIX, i.to_bytes(20, "big")): 1 for i in range(1, n + 1)}


def fresh_home(
    root: Path, name: str, extra: dict[str, int] | None = None
) -> tuple[Home, dict[str, int]]:
    home = Home(root=root / name)
    accounts = {**(extra or {}), **{k.address: 10**9 for k in SENDERS}}
    genesis = devnet_genesis(accounts=accounts, genesis_time_ms=0)
    init_devnet(home, genesis)
    numbers = {
        acc.address: i + 1
        for i, acc in enumerate(sorted(genesis.accounts, key=lambda a: a.address))
    }
    return home, numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (< 1 minute)")
    args = parser.parse_args()
    n = 400 if args.quick else 4000
    big = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        home, numbers = fresh_home(Path(tmp), "engine")
        txs = signed_transfers(n, numbers)
        verify = verify_only_rate(txs, numbers)
        emit("chain_signature_verify_tx_per_s", verify, "tx/s")
        rate, (block_latency, empty_latency) = engine_rate(home, txs)
        emit("chain_engine_committed_tx_per_s", rate, "tx/s", baseline=verify, goal=">= 0.2")
        emit(
            "chain_block_commit_latency_ms",
            block_latency * 1000,
            "ms",
            goal="<= 5000",
        )
        emit("chain_empty_block_commit_latency_ms", empty_latency * 1000, "ms", goal="<= 100")
        small_home, _ = fresh_home(Path(tmp), "small")
        big_home, _ = fresh_home(Path(tmp), "big", filler_accounts(big))
        small, large = empty_block_latencies([small_home, big_home])
        emit(
            f"chain_empty_block_commit_latency_{big // 1000}k_accounts_ms",
            large * 1000,
            "ms",
            baseline=small * 1000,  # the same on an 8-account state
            goal="<= 2",
        )
        from socket import socket

        with socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        home2, numbers2 = fresh_home(Path(tmp), "rpc")
        rpc_txs = signed_transfers(n // 2, numbers2)
        emit(
            "chain_rpc_committed_tx_per_s",
            rpc_rate(home2, rpc_txs, port),
            "tx/s",
            baseline=rate,  # the in-process engine rate above
            goal=">= 0.05",  # one sequential HTTP client: bounded by the request round trip
        )


if __name__ == "__main__":
    main()
