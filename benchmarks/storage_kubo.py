"""Storage through real Kubo daemons against the local blockstore, measured in the same run.

Figures (one JSON object per line; medians over the repeats, run alternately with their
baseline because the host is shared):
- kubo_add_mb_s: `KuboClient.add_file` (streamed to the node's API, pinned there) vs
  `Blockstore.add_file` of the same file
- kubo_fetch_mb_s: `KuboClient.cat_to_file` from the same node (every block verified against
  its CID, written atomically) vs `Blockstore.cat_to_file`
- kubo_cross_node_fetch_mb_s: a 100 MB artifact added on node A and fetched, verified, through
  node B over bitswap (fresh each repeat: B's cache is emptied by `repo gc`) vs a local
  verified read of the same artifact

Needs the `ipfs` binary (bash scripts/kubo.sh). Run: python -m benchmarks.storage_kubo [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from r3mes.runtime.net import free_port
from r3mes.storage.blockstore import Blockstore
from r3mes.storage.kubo import KuboClient
from r3mes.storage.kubo_daemon import KuboDaemon, find_ipfs, init_daemon

GOALS = {
    "kubo_add_mb_s": ">= 0.3",
    "kubo_fetch_mb_s": ">= 0.25",
    "kubo_cross_node_fetch_mb_s": ">= 0.1",
}
MB = 1 << 20


def _daemon(root: Path, binary: str) -> KuboDaemon:
    daemon = init_daemon(
        root, binary=binary, api_port=free_port(), gateway_port=free_port(), swarm_port=free_port()
    )
    daemon.start()
    return daemon


def paired(
    action: Callable[[int], None], baseline: Callable[[int], None], repeats: int
) -> tuple[float, float]:
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        for run, out in ((action, times[0]), (baseline, times[1])):
            start = time.perf_counter()
            run(i)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def emit(figure: str, size: int, seconds: float, base_seconds: float, note: str) -> None:
    value, baseline = size / MB / seconds, size / MB / base_seconds
    print(  # noqa: T201 - a benchmark's output is its JSON lines
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 1),
                "unit": "MB/s",
                "baseline": round(baseline, 1),
                "baseline_is": note,
                "ratio": round(value / baseline, 3),
                "goal": GOALS[figure],
                "size_mb": size // MB,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files, fewer repeats")
    args = parser.parse_args()
    size = (16 if args.quick else 64) * MB
    cross = (20 if args.quick else 100) * MB
    repeats = 3 if args.quick else 5
    binary = find_ipfs((Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin",))
    work = Path(tempfile.mkdtemp(prefix="r3mes-kubo-bench-"))
    a = b = None
    try:
        a, b = _daemon(work / "a", binary), _daemon(work / "b", binary)
        b.connect(a)
        src = work / "src.bin"
        src.write_bytes(os.urandom(size))
        client_a = KuboClient(a.api_url, timeout=120.0)
        local = Blockstore(work / "local")

        def kubo_add(i: int) -> None:
            client_a.add_file(src)

        def local_add(i: int) -> None:
            local.add_file(src)

        emit("kubo_add_mb_s", size, *paired(kubo_add, local_add, repeats), "Blockstore.add_file")

        cid = client_a.add_file(src)
        local.add_file(src)

        def kubo_fetch(i: int) -> None:
            client_a.cat_to_file(cid, work / "out-kubo.bin")

        def local_fetch(i: int) -> None:
            local.cat_to_file(cid, work / "out-local.bin")

        emit("kubo_fetch_mb_s", size, *paired(kubo_fetch, local_fetch, repeats), "Blockstore read")

        artifact = work / "artifact.bin"
        artifact.write_bytes(os.urandom(cross))
        big = client_a.add_file(artifact)
        local.add_file(artifact)
        client_b = KuboClient(b.api_url, timeout=300.0)

        def cross_fetch(i: int) -> None:
            b.ipfs("repo", "gc", "--quiet")  # B must fetch every block from A again
            client_b.cat_to_file(big, work / "out-b.bin", max_size=cross + MB)

        def local_big(i: int) -> None:
            local.cat_to_file(big, work / "out-local-big.bin")

        emit(
            "kubo_cross_node_fetch_mb_s",
            cross,
            *paired(cross_fetch, local_big, max(2, repeats - 2)),
            "local verified read",
        )
    finally:
        for daemon in (a, b):
            if daemon is not None:
                daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
