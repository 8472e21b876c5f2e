"""Useful work of a default `r3mes up` (issue 17): the held-out loss of the adapter after
10 approved versions against the base model's (both measured by the network's proposer in
this run), the time to the first approved version, and rounds per minute.

The whole network runs as `r3mes up` runs it (every role a real process, default settings)
in a temporary home; `--quick` runs the tiny model, short rounds and 2 versions.
Run: .venv/bin/python -m benchmarks.up_useful_work [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from r3mes.node.localnet.dashboard import Snapshot
from r3mes.node.localnet.network import UpOptions, run_network
from r3mes.node.localnet.setup import NetworkSpec
from r3mes.paths import Home


def emit(figure: str, value: float, unit: str, goal: str, baseline: float | None) -> None:
    row: dict[str, object] = {
        "figure": figure,
        "value": round(value, 6),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 6),
        "ratio": None if not baseline else round(value / baseline, 5),
        "goal": goal,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 versions (~1 min)")
    args = parser.parse_args()
    versions = 2 if args.quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(root=Path(tmp))
        spec = (
            NetworkSpec(
                home=home,
                base_model="tiny",
                round_blocks=10,
                block_interval=0.5,
                serving=False,
                backend=False,
                dataset_chars=40_000,
            )
            if args.quick
            else NetworkSpec(home=home)  # `r3mes up`'s defaults
        )
        options = UpOptions(chain_port=0, backend_port=0, rounds=versions, max_rounds=versions + 6)
        start = time.monotonic()
        marks: dict[str, float] = {}
        first: list[Snapshot] = []

        def on_snapshot(snapshot: Snapshot) -> None:
            marks["last"] = time.monotonic()
            if not first:
                first.append(snapshot)
                marks["first"] = marks["last"]
            elif "first_version" not in marks and snapshot.adapter_version > (
                first[0].adapter_version
            ):
                marks["first_version"] = time.monotonic()

        result = run_network(spec, options, stop=threading.Event(), on_snapshot=on_snapshot)
    if not result.ok or result.snapshot is None or not first:
        raise SystemExit(f"the network did not reach {versions} versions: {result}")
    last = result.snapshot
    target = first[0].adapter_version + versions
    loss = next((v.get("heldout_loss") for v in last.versions if v["version"] == target), None)
    base = last.base_loss
    if loss is None or base is None:
        raise SystemExit(f"no held-out loss for v{target} or the base: {last.versions}")
    goal = "ratio <= 1.0" if args.quick else "ratio <= 0.998"
    emit(f"held-out loss after {versions} versions", float(loss), "nats", goal, base)
    emit(
        "time to the first approved version (from start, genesis included)",
        marks["first_version"] - start,
        "s",
        "<= 120",
        None,
    )
    minutes = (marks["last"] - marks["first"]) / 60
    ideal = 60 / (spec.round_blocks * spec.block_interval)
    emit(
        "rounds per minute (first to last snapshot; baseline: round_blocks x block_interval)",
        (last.current_round - first[0].current_round) / minutes,
        "rounds/min",
        "ratio >= 0.8",
        ideal,
    )


if __name__ == "__main__":
    main()
