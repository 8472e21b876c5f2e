"""Local blockstore throughput and CID cost, each against a plain baseline in the same run.

Figures (one JSON object per line):
- blockstore_add_mb_s: `Blockstore.add_bytes` vs writing the same bytes to one file (fsync'd)
- blockstore_verified_read_mb_s: `Blockstore.get_bytes` (every block hashed) vs reading that file
- cid_compute_mb_s: `compute_cid` (CIDv1, balanced DAG) vs one `hashlib.sha256` over the bytes

Run: .venv/bin/python -m benchmarks.storage [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from r3mes.storage.blockstore import Blockstore
from r3mes.storage.unixfs import compute_cid


def best_seconds(action: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def emit(figure: str, value: float, baseline: float, goal: str) -> None:
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 1),
                "unit": "MB/s",
                "baseline": round(baseline, 1),
                "ratio": round(value / baseline, 3),
                "goal": goal,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 2 repeats (< 1 minute)")
    args = parser.parse_args()
    size = (32 if args.quick else 256) * 1024 * 1024
    repeats = 2 if args.quick else 3
    data = os.urandom(size)
    mb = size / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        counter = iter(range(1000))

        def add() -> None:
            Blockstore(root / f"bs{next(counter)}").add_bytes(data)

        def plain_write() -> None:
            path = root / f"plain{next(counter)}"
            with path.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())

        emit(
            "blockstore_add_mb_s",
            mb / best_seconds(add, repeats),
            mb / best_seconds(plain_write, repeats),
            ">= 0.3",
        )

        store = Blockstore(root / "read")
        cid = store.add_bytes(data)
        plain = root / "plain-read"
        plain.write_bytes(data)
        read = best_seconds(lambda: store.get_bytes(cid, max_size=size), repeats)
        copy = best_seconds(plain.read_bytes, repeats)
        emit("blockstore_verified_read_mb_s", mb / read, mb / copy, ">= 0.2")

    cid_s = best_seconds(lambda: compute_cid(data), repeats)
    sha_s = best_seconds(lambda: hashlib.sha256(data).digest(), repeats)
    emit("cid_compute_mb_s", mb / cid_s, mb / sha_s, ">= 0.5")


if __name__ == "__main__":
    main()
