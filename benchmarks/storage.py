"""Local blockstore throughput and CID cost, each against a plain baseline in the same run.

Figures (one JSON object per line; value and baseline are medians over the repeats):
- blockstore_add_mb_s: `Blockstore.add_file` (chunk, hash, one file per block, flushed to
  disk, pinned) vs `shutil.copyfile` of the same file plus fsync of the copy
- blockstore_verified_read_mb_s: `Blockstore.cat_to_file` (every block hashed against its
  CID, written atomically and fsync'd) vs the same copy of a plain file
- cid_compute_mb_s: `compute_cid` (CIDv1, balanced DAG) vs one `hashlib.sha256` over the bytes

Each figure and its baseline run alternately, repeat by repeat (the host is shared and its load
drifts). Goals apply to the ratios; their basis is the lowest ratio seen over 10 runs on a
shared, loaded 2-core VM, less about a third (docs/benchmarks.md has the ranges): a blockstore
writes one file per 256 KiB block and hashes every byte, `copyfile` is one in-kernel copy.

Run: .venv/bin/python -m benchmarks.storage [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from r3mes.storage.blockstore import Blockstore
from r3mes.storage.unixfs import compute_cid

GOALS = {
    "blockstore_add_mb_s": ">= 0.12",
    "blockstore_verified_read_mb_s": ">= 0.25",
    "cid_compute_mb_s": ">= 0.8",
}


def paired_medians(
    action: Callable[[int], object], baseline: Callable[[int], object], repeats: int
) -> tuple[float, float]:
    """Median wall times of `action(i)` and `baseline(i)`, run alternately so that both see
    the same machine load (the host is shared; load drifts within seconds)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        for run, out in ((action, times[0]), (baseline, times[1])):
            start = time.perf_counter()
            run(i)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def emit(figure: str, value: float, baseline: float) -> None:
    print(  # noqa: T201 - a benchmark's output is its JSON lines
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 1),
                "unit": "MB/s",
                "baseline": round(baseline, 1),
                "ratio": round(value / baseline, 3),
                "goal": GOALS[figure],
            }
        )
    )


def copy_fsynced(src: Path, dst: Path) -> None:
    """The plain baseline: copy a file and make the copy durable."""
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 7 repeats (< 1 minute)")
    args = parser.parse_args()
    size = (32 if args.quick else 128) * 1024 * 1024
    repeats = 7 if args.quick else 9
    data = os.urandom(size)
    mb = size / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "source.bin"
        src.write_bytes(data)

        def add(i: int) -> None:
            Blockstore(root / f"bs{i}").add_file(src)

        def plain_copy(i: int) -> None:
            copy_fsynced(src, root / f"copy{i}")

        add_s, copy_s = paired_medians(add, plain_copy, repeats)
        emit("blockstore_add_mb_s", mb / add_s, mb / copy_s)
        for i in range(repeats):
            shutil.rmtree(root / f"bs{i}", ignore_errors=True)
            (root / f"copy{i}").unlink(missing_ok=True)

        store = Blockstore(root / "read")
        cid = store.add_bytes(data)
        read_s, copy_s = paired_medians(
            lambda i: store.cat_to_file(cid, root / f"out{i}"), plain_copy, repeats
        )
        emit("blockstore_verified_read_mb_s", mb / read_s, mb / copy_s)

    cid_s, sha_s = paired_medians(
        lambda _: compute_cid(data), lambda _: hashlib.sha256(data).digest(), repeats
    )
    emit("cid_compute_mb_s", mb / cid_s, mb / sha_s)


if __name__ == "__main__":
    main()
