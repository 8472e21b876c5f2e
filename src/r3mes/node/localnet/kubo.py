"""`r3mes up --storage kubo`: one real Kubo node per role group, swarm-connected on loopback.

Groups: "publisher" (genesis artifacts, proposer, serving node), "miners" and "validators".
Each group's roles read and write through their own node; content moves between the groups
only over bitswap, as it would between machines. Repos live in `$R3MES_HOME/kubo/GROUP` and are
kept between runs; the local blockstore's pinned artifacts are (re)published to the publisher
node at every start, so a home prepared without Kubo works with it too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from r3mes.paths import Home
from r3mes.runtime.net import free_port
from r3mes.storage.kubo_daemon import KuboDaemon, init_daemon

logger = logging.getLogger(__name__)

GROUPS = ("publisher", "miners", "validators")
ROLE_GROUP = {
    "miner": "miners",
    "validator": "validators",
    "proposer": "publisher",
    "serving": "publisher",
}


@dataclass
class KuboGroups:
    """The running nodes, by group."""

    nodes: dict[str, KuboDaemon]

    @property
    def publisher_url(self) -> str:
        return self.nodes["publisher"].api_url

    def url_for(self, role: str) -> str:
        return self.nodes[ROLE_GROUP.get(role, "publisher")].api_url

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def start_kubo_groups(home: Home, *, binary: str) -> KuboGroups:
    """Start one daemon per group and connect every pair; stops what started on failure."""
    groups = KuboGroups(nodes={})
    home.logs.mkdir(parents=True, exist_ok=True)
    try:
        for group in GROUPS:
            node = init_daemon(
                home.root / "kubo" / group,
                binary=binary,
                api_port=free_port(),
                gateway_port=free_port(),
                swarm_port=free_port(),
            )
            node.start(log_path=home.logs / f"kubo-{group}.out")
            groups.nodes[group] = node
            logger.info("kubo %s node %s at %s", group, node.peer_id, node.api_url)
        names = list(groups.nodes)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                groups.nodes[first].connect(groups.nodes[second])
    except Exception:
        groups.stop()
        raise
    return groups


def publish_local_pins(blocks: Path, api_url: str) -> int:
    """Add every artifact pinned in the local blockstore to the node at `api_url`."""
    from r3mes.storage.blockstore import Blockstore
    from r3mes.storage.errors import StorageError
    from r3mes.storage.kubo import KuboClient

    store = Blockstore(blocks)
    count = 0
    with KuboClient(api_url, timeout=120.0) as client:
        for cid in store.pins():
            got = client.add_bytes(store.get_bytes(cid), cid_version=1)
            if got != cid:
                raise StorageError(f"Kubo stored {cid} as {got}; the artifact was not imported")
            count += 1
    return count
