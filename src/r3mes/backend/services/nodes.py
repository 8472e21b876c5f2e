"""The serving-node directory: who can serve what, how busy they are, and who is cooling down.

Nodes come from the ledger (registered serving nodes the ledger still counts as active, i.e.
with a heartbeat younger than its `serving_stale_after_ms`: endpoint, adapter version,
capacity), re-read whenever a new block appears, plus any static endpoints from settings.
What a node serves (its base model and adapter names) comes from probing its
`GET /v1/models`; a node is routable once a probe succeeded.

Routing picks, among routable nodes holding the model, the one with the fewest in-flight
requests relative to its capacity. A circuit breaker per node: `failures_to_trip`
consecutive failures open it for `cooldown_s`; after that a health probe closes it again
(or re-opens it for another cool-down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from r3mes.chain.client_types import PREFIX

log = logging.getLogger(__name__)

PROBE_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
AUTO_MODEL = "auto"
VERSION_SEP = "@"


@dataclass(frozen=True)
class ModelRef:
    """A requested model: `name` (base model, adapter or `auto`), optionally pinned to an
    adapter `version` (`r3mes-adapter@3`)."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, model: str) -> ModelRef:
        name, sep, version = model.partition(VERSION_SEP)
        if not sep:
            return cls(name)
        if not (version.isascii() and version.isdigit()) or len(version) > 12 or not name:
            return cls(model)  # not a pinned name; no node will hold it -> model_not_found
        return cls(name, int(version))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}{VERSION_SEP}{self.version}"


@dataclass
class NodeState:
    """One serving node as the gateway sees it (mutable, owned by `NodeDirectory`)."""

    key: str
    """Operator address (`remes1...`) for ledger nodes; `static:<url>` otherwise."""
    endpoint: str
    capacity: int
    adapter_version: int = 0
    operator: str | None = None
    """Who is paid for this node's work (None: a static node nobody is paid for)."""
    base_model: str = ""
    models: frozenset[str] = frozenset()
    """Names its `/v1/models` lists (base model, adapters, `auto`)."""
    in_flight: int = 0
    failures: int = 0
    open_until: float = 0.0
    """Monotonic time before which the circuit is open (no traffic)."""
    probed_ok: bool = False
    last_probe: float = 0.0
    last_error: str = ""
    served: int = 0
    last_pick: int = 0
    """The directory's pick counter when this node was last picked (ties go round-robin)."""

    def is_open(self, now: float) -> bool:
        return now < self.open_until or (self.failures > 0 and not self.probed_ok)

    def holds(self, model: ModelRef) -> bool:
        if model.name not in self.models:
            return False
        if model.version is None:
            return True
        return model.name != self.base_model and self.adapter_version == model.version

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "ok": self.probed_ok and not self.is_open(now),
            "endpoint": self.endpoint,
            "operator": self.operator,
            "capacity": self.capacity,
            "in_flight": self.in_flight,
            "adapter_version": self.adapter_version,
            "models": sorted(self.models),
            "circuit": "open" if self.is_open(now) else "closed",
            "failures": self.failures,
            "error": self.last_error or None,
        }


@dataclass(frozen=True)
class Announced:
    """What the ledger (or settings) says about a node."""

    key: str
    endpoint: str
    capacity: int
    adapter_version: int
    operator: str | None


def parse_static(entries: Iterable[str], *, capacity: int) -> list[Announced]:
    """`URL` or `remes1...=URL` entries from settings."""
    out = []
    for entry in entries:
        operator, sep, url = entry.partition("=")
        if not sep:
            operator, url = "", entry
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"serving endpoint {entry!r} is not an http(s) URL")
        key = operator.strip() or f"static:{url}"
        out.append(Announced(key, url, capacity, 0, operator.strip() or None))
    return out


@dataclass
class NodeDirectory:
    """Known nodes, routing, circuit breaking and probes (see the module docstring)."""

    http: httpx.AsyncClient
    failures_to_trip: int = 3
    cooldown_s: float = 15.0
    probe_interval_s: float = 5.0
    default_capacity: int = 8
    nodes: dict[str, NodeState] = field(default_factory=dict)
    chain_height: int = 0
    ledger_error: str = ""
    static: list[Announced] = field(default_factory=list)
    picks: int = 0

    # -- membership ---------------------------------------------------------------------

    def update(self, announced: list[Announced]) -> list[NodeState]:
        """Set the node list (static ones always stay); returns the nodes that are new."""
        wanted = {a.key: a for a in [*self.static, *announced]}
        for key in list(self.nodes):
            if key not in wanted:
                log.info("serving node %s left the directory", key)
                del self.nodes[key]
        fresh = []
        for a in wanted.values():
            node = self.nodes.get(a.key)
            if node is None or node.endpoint != a.endpoint:
                node = NodeState(
                    key=a.key,
                    endpoint=a.endpoint,
                    capacity=a.capacity or self.default_capacity,
                    operator=a.operator,
                )
                self.nodes[a.key] = node
                fresh.append(node)
            node.capacity = a.capacity or self.default_capacity
            node.adapter_version = a.adapter_version
        return fresh

    # -- routing ------------------------------------------------------------------------

    def routable(self) -> list[NodeState]:
        """Nodes that take traffic now (probed, circuit closed)."""
        now = time.monotonic()
        return [n for n in self.nodes.values() if n.probed_ok and not n.is_open(now)]

    def known_model(self, model: ModelRef) -> bool:
        """Some probed node (even one cooling down) holds `model`."""
        return any(n.probed_ok and n.holds(model) for n in self.nodes.values())

    def pick(self, model: ModelRef, *, exclude: set[str]) -> NodeState | None:
        """The least loaded routable node holding `model`, not in `exclude`; among equally
        loaded ones the one picked longest ago, so idle nodes share the traffic."""
        now = time.monotonic()
        best: NodeState | None = None
        best_rank = (0.0, 0)
        for node in self.nodes.values():
            if node.key in exclude or not node.probed_ok or node.is_open(now):
                continue
            if not node.holds(model):
                continue
            rank = (node.in_flight / node.capacity, node.last_pick)
            if best is None or rank < best_rank:
                best, best_rank = node, rank
        if best is not None:
            self.picks += 1
            best.last_pick = self.picks
        return best

    def succeeded(self, node: NodeState) -> None:
        node.failures = 0
        node.served += 1

    def failed(self, node: NodeState, reason: str) -> None:
        """Count a failure; at `failures_to_trip` in a row the node cools down."""
        node.failures += 1
        node.last_error = reason
        if node.failures >= self.failures_to_trip:
            node.open_until = time.monotonic() + self.cooldown_s
            node.probed_ok = False
            log.warning(
                "serving node %s cools down for %.1f s after %d failures (%s)",
                node.key,
                self.cooldown_s,
                node.failures,
                reason,
            )

    # -- probes -------------------------------------------------------------------------

    async def probe(self, node: NodeState) -> bool:
        """`GET /v1/models` on the node; records what it serves and closes the circuit."""
        node.last_probe = time.monotonic()
        try:
            response = await self.http.get(f"{node.endpoint}/v1/models", timeout=PROBE_TIMEOUT)
            response.raise_for_status()
            data = response.json()["data"]
            names = frozenset(str(m["id"]) for m in data)
            base = next((str(m["id"]) for m in data if "parent" not in m and m["id"] != "auto"), "")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            reason = f"probe: {type(exc).__name__}"
            if node.probed_ok and not node.open_until:
                # A node in service: one slow probe counts like one failed request (a busy
                # node should not drop out on a single timeout); enough of them trip it.
                self.failed(node, reason)
            else:
                node.last_error = reason
                node.probed_ok = False
                if node.open_until:
                    node.open_until = time.monotonic() + self.cooldown_s
            return False
        if not node.probed_ok:
            log.info("serving node %s is up (%s)", node.key, ", ".join(sorted(names)))
        node.models, node.base_model = names, base
        node.probed_ok = True
        if time.monotonic() >= node.open_until:
            node.failures = 0
            node.open_until = 0.0
            node.last_error = ""
        return True

    async def probe_due(self) -> None:
        """Probe every node whose interval passed (tripped ones once their cool-down ends)."""
        now = time.monotonic()
        due = [
            n
            for n in self.nodes.values()
            if now >= n.open_until
            and (now - n.last_probe >= self.probe_interval_s or (n.open_until and not n.probed_ok))
        ]
        if due:
            await asyncio.gather(*(self.probe(n) for n in due))

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        nodes = {key: n.describe(now) for key, n in sorted(self.nodes.items())}
        return {"ok": any(n["ok"] for n in nodes.values()), "required": False, "nodes": nodes}


class LedgerNodes:
    """Reads serving nodes from the ledger's REST, and the height from its RPC `status`."""

    def __init__(self, http: httpx.AsyncClient, rpc_url: str) -> None:
        self.http = http
        self.url = rpc_url.rstrip("/")

    async def height(self) -> int:
        body = {"jsonrpc": "2.0", "id": 1, "method": "status", "params": {}}
        response = await self.http.post(f"{self.url}/", json=body, timeout=PROBE_TIMEOUT)
        response.raise_for_status()
        return int(response.json()["result"]["sync_info"]["latest_block_height"])

    async def serving_nodes(self) -> list[Announced]:
        response = await self.http.get(
            f"{self.url}{PREFIX}/nodes", params={"role": "serving"}, timeout=PROBE_TIMEOUT
        )
        response.raise_for_status()
        out = []
        for doc in response.json()["nodes"]:
            if not doc.get("active") or not str(doc.get("endpoint", "")).startswith("http"):
                continue
            out.append(
                Announced(
                    key=str(doc["address"]),
                    endpoint=str(doc["endpoint"]).rstrip("/"),
                    capacity=int(doc.get("capacity") or 0),
                    adapter_version=int(doc.get("adapter_version") or 0),
                    operator=str(doc["address"]),
                )
            )
        return out


async def follow(directory: NodeDirectory, ledger: LedgerNodes | None, *, poll_s: float) -> None:
    """Forever: re-read the ledger's nodes on each new block, probe nodes when due."""
    directory.update([])
    await directory.probe_due()
    while True:
        if ledger is not None:
            await refresh_from_ledger(directory, ledger)
        await directory.probe_due()
        await asyncio.sleep(min(poll_s, directory.probe_interval_s))


async def refresh_from_ledger(directory: NodeDirectory, ledger: LedgerNodes) -> None:
    try:
        height = await ledger.height()
        if height != directory.chain_height:
            fresh = directory.update(await ledger.serving_nodes())
            directory.chain_height = height
            if fresh:
                await asyncio.gather(*(directory.probe(n) for n in fresh))
        directory.ledger_error = ""
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        directory.ledger_error = type(exc).__name__
        log.warning("could not read serving nodes from the ledger: %s", type(exc).__name__)
