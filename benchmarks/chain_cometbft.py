"""The ledger on four CometBFT validators vs the embedded devnet, in the same run.

Both are driven the same way: 8 sender threads (one per account, so each account's
sequences arrive in order) POST `broadcast_tx_sync` to the node's JSON-RPC, then wait until
every tx is committed. Figures: committed tx/s (baseline: the devnet), the interval between
committed blocks (p50, p99; CometBFT's from BFT header times, timeout_commit 200ms, the
devnet's block interval 0.2 s) and one tx's broadcast-to-committed latency (p50, p99,
one tx at a time); for reference, the signature-verify floor benchmarks/chain.py prints.

Needs `cometbft` (bash scripts/cometbft.sh).
Run: .venv/bin/python -m benchmarks.chain_cometbft [--quick]
Prints one JSON object per line: {"figure", "value", "unit", "baseline", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from benchmarks.chain import SENDERS, emit, signed_transfers, verify_only_rate
from r3mes.chain.cometbft import CometbftNetwork, find_cometbft
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.genesis import Genesis
from r3mes.chain.testnet import NodePorts, TestnetConfig, write_testnet
from r3mes.chain.tx import tx_hash
from r3mes.paths import Home
from r3mes.runtime.net import free_port

CHAIN_ID = "r3mes-devnet-1"  # benchmarks.chain signs for this id


def genesis() -> tuple[Genesis, dict[str, int]]:
    doc = devnet_genesis(chain_id=CHAIN_ID, accounts={k.address: 10**9 for k in SENDERS})
    numbers = {
        a.address: i + 1 for i, a in enumerate(sorted(doc.accounts, key=lambda a: a.address))
    }
    return doc, numbers


def rpc(http: httpx.Client, method: str, **params: str) -> dict[str, object]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    doc = http.post("/", json=body).json()
    if "result" not in doc:
        raise RuntimeError(f"{method}: {doc.get('error')}")
    result: dict[str, object] = doc["result"]
    return result


def committed(http: httpx.Client, digest: str) -> bool:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tx", "params": {"hash": digest}}
    return "result" in http.post("/", json=body).json()


def send_all(url: str, txs: list[bytes], hash_param: Callable[[str], str]) -> float:
    """tx/s from the first broadcast until every tx is committed."""
    per_sender = [txs[i :: len(SENDERS)] for i in range(len(SENDERS))]
    errors: list[str] = []

    def sender(batch: list[bytes]) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for raw in batch:
                result = rpc(http, "broadcast_tx_sync", tx=base64.b64encode(raw).decode())
                if result["code"] != 0:
                    errors.append(str(result))

    start = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(b,)) for b in per_sender]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"broadcast refused: {errors[:3]}")
    with httpx.Client(base_url=url, timeout=30) as http:
        for batch in per_sender:  # each sender's last tx commits after its earlier ones
            last = hash_param(tx_hash(batch[-1]))
            while not committed(http, last):
                time.sleep(0.02)
    return len(txs) / (time.perf_counter() - start)


def confirm_latencies(url: str, txs: list[bytes], hash_param: Callable[[str], str]) -> list[float]:
    """Seconds from broadcast to committed, one tx at a time (polling every 10 ms)."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for raw in txs:
            start = time.perf_counter()
            assert rpc(http, "broadcast_tx_sync", tx=base64.b64encode(raw).decode())["code"] == 0
            digest = hash_param(tx_hash(raw))
            while not committed(http, digest):
                time.sleep(0.01)
            out.append(time.perf_counter() - start)
    return out


def block_intervals(url: str, first: int, last: int) -> list[float]:
    """Seconds between consecutive committed blocks, from the headers' times."""
    times = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for h in range(first, last + 1):
            header = rpc(http, "block", height=str(h))["block"]["header"]  # type: ignore[index]
            text = str(header["time"])
            whole, _, frac = text.rstrip("Z").partition(".")
            moment = datetime.fromisoformat(whole + "+00:00").timestamp()
            times.append(moment + float("0." + (frac or "0")))
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def height_of(url: str) -> int:
    with httpx.Client(base_url=url, timeout=10) as http:
        status = rpc(http, "status")
    return int(status["sync_info"]["latest_block_height"])  # type: ignore[index]


def run_devnet(
    root: Path, txs: list[bytes], probe: list[bytes]
) -> tuple[float, list[float], list[float]]:
    home = Home(root=root / "devnet")
    doc, _ = genesis()
    init_devnet(home, doc)
    node = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.2))
    node.start()
    try:
        hexed = str.upper  # the devnet's `tx` takes hex
        first = height_of(node.url) + 1
        rate = send_all(node.url, txs, hexed)
        last = height_of(node.url)
        latencies = confirm_latencies(node.url, probe, hexed)
        return rate, block_intervals(node.url, first, last), latencies
    finally:
        node.stop()


def run_cometbft(
    root: Path, txs: list[bytes], probe: list[bytes]
) -> tuple[float, list[float], list[float]]:
    doc, _ = genesis()
    ports = tuple(NodePorts(free_port(), free_port(), free_port()) for _ in range(4))
    config = TestnetConfig(validators=4, ports=ports, timeout_commit="200ms")
    nodes = write_testnet(root / "bft", doc, config)
    gopath = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin"
    net = CometbftNetwork(nodes, binary=find_cometbft((gopath,)))
    net.start()
    try:
        if not net.wait_height(2, timeout_s=60):
            raise RuntimeError("the CometBFT testnet did not start")
        url = nodes[0].rpc_url

        def b64(digest: str) -> str:  # CometBFT's JSON body carries bytes as base64
            return base64.b64encode(bytes.fromhex(digest)).decode()

        first = height_of(url) + 1
        rate = send_all(url, txs, b64)
        last = height_of(url)
        latencies = confirm_latencies(url, probe, b64)
        return rate, block_intervals(url, first, last), latencies
    finally:
        net.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (< 1 minute)")
    args = parser.parse_args()
    n = 400 if args.quick else 4000
    probes = 10 if args.quick else 50
    _, numbers = genesis()
    everything = signed_transfers(n + probes * len(SENDERS), numbers)
    txs = everything[:n]
    # one probe per sender round, taking each sender's next sequences in order
    probe = everything[n : n + probes * len(SENDERS) : len(SENDERS)]
    emit("chain_signature_verify_tx_per_s", verify_only_rate(txs, numbers), "tx/s")
    with tempfile.TemporaryDirectory() as tmp:
        dev_rate, dev_blocks, dev_lat = run_devnet(Path(tmp), txs, probe)
        bft_rate, bft_blocks, bft_lat = run_cometbft(Path(tmp), txs, probe)
    emit(
        "chain_cometbft_4v_committed_tx_per_s", bft_rate, "tx/s", baseline=dev_rate, goal=">= 0.25"
    )
    for q in (0.5, 0.99):
        name = f"p{int(q * 100)}"
        emit(
            f"chain_cometbft_4v_block_interval_{name}_ms",
            pct(bft_blocks, q) * 1000,
            "ms",
            baseline=pct(dev_blocks, q) * 1000,
            goal="<= 2000",
        )
        emit(
            f"chain_cometbft_4v_tx_commit_latency_{name}_ms",
            pct(bft_lat, q) * 1000,
            "ms",
            baseline=pct(dev_lat, q) * 1000,
            goal="<= 3000",
        )
    emit("chain_devnet_blocks_measured", len(dev_blocks), "blocks")
    emit("chain_cometbft_blocks_measured", len(bft_blocks), "blocks")


if __name__ == "__main__":
    main()
