"""The explorer's live side: the indexer as a chain-follower handler, and what happens after
each indexed block commits (cache generation bump, websocket pushes), plus the poller that
fills in each adapter version's held-out loss from the proposer that made it.

`explorer_service(runtime)` builds the one `Explorer` of a process (kept in
`runtime.services`); routes reach it through `api/routes/ws.py`'s and the routers' deps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.index import IxAccount, IxAdapterVersion, IxNode, IxRound
from r3mes.backend.services import explorer, leaderboard
from r3mes.backend.services.cache import ExplorerCache
from r3mes.backend.services.chain_follower import ChainBlock, ChainRpc
from r3mes.backend.services.index_rows import BlockSummary, block_time_ms, load_meta
from r3mes.backend.services.indexer import index_block
from r3mes.backend.services.ws import Hub, encode
from r3mes.chain.genesis import Genesis

if TYPE_CHECKING:
    from r3mes.backend.runtime import Runtime

log = logging.getLogger(__name__)

SERVICE_KEY = "explorer"
HANDLER_NAME = "indexer"
LOSS_POLL_S = 10.0


class Explorer:
    """Indexer handler + post-commit fan-out (see the module docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.db = runtime.db
        self.rpc = ChainRpc(settings.chain_rpc, runtime.http)
        self.cache = ExplorerCache(
            redis=runtime.redis, prefix=settings.redis_prefix, ttl_s=settings.explorer_cache_ttl_s
        )
        self.hub = Hub(
            queue_size=settings.ws_queue_size,
            max_per_ip=settings.ws_max_per_ip,
            ping_interval_s=settings.ws_ping_interval_s,
        )
        self._summaries: dict[int, BlockSummary] = {}
        self.last: dict[str, str] = {}
        """The latest message of each public channel, sent to a client when it joins."""

    # -- chain follower handler and listener ----------------------------------------------

    async def handle(self, session: AsyncSession, block: ChainBlock) -> None:
        genesis = None
        if await load_meta(session) is None:
            doc = (await self.rpc.call("genesis"))["genesis"]  # CometBFT's; ours is app_state
            genesis = Genesis.from_json(json.dumps(doc.get("app_state", doc)))
        summary = await index_block(session, block, genesis=genesis)
        for stale in [h for h in self._summaries if h <= block.height]:
            del self._summaries[stale]  # from a transaction that rolled back
        if summary is not None:
            self._summaries[block.height] = summary

    async def on_block(self, block: ChainBlock) -> None:
        """After the block's transaction committed: new cache generation, websocket pushes."""
        committed_ms = int(time.time() * 1000)
        summary = self._summaries.pop(block.height, None)
        if summary is None:  # indexed by another process sharing the database
            summary = await self._summary_from_index(block)
        await self.cache.invalidate(block.height)
        doc = summary.to_json()
        doc["committed_at"] = committed_ms
        text = encode("block", "blocks", doc)
        self.last["blocks"] = text
        self.hub.publish("blocks", text)
        try:
            await self._push_views(summary, committed_ms)
        except Exception:
            log.exception("explorer: websocket views for block %d failed", block.height)

    async def _summary_from_index(self, block: ChainBlock) -> BlockSummary:
        async with self.db.read() as s:
            m = await load_meta(s)
        length = int(json.loads(m.params)["round_length"]) if m is not None else 1
        return BlockSummary(
            height=block.height,
            hash=block.hash.lower(),
            time_ms=block_time_ms(block),
            num_txs=len(block.txs),
            round=(block.height - 1) // length + 1,
            tx_hashes=[t.hash for t in block.txs],
        )

    async def _push_views(self, summary: BlockSummary, committed_ms: int) -> None:
        hub = self.hub
        watched = [k.split(":", 1)[1] for k in hub.keys("miner_stats:")]
        touched = [a for a in watched if a in summary.touched]
        wants_status = hub.subscribers("network_status") or "network_status" not in self.last
        wants_training = hub.subscribers("training_metrics") or "training_metrics" not in self.last
        if not (touched or wants_status or wants_training):
            return
        async with self.db.read() as s:
            if wants_status:
                stats = await leaderboard.network_stats(s)
                stats["committed_at"] = committed_ms
                self.last["network_status"] = encode("network_status", "network_status", stats)
                hub.publish("network_status", self.last["network_status"])
            if wants_training:
                for text in await training_messages(s, summary, committed_ms):
                    self.last["training_metrics"] = text
                    hub.publish("training_metrics", text)
            for address in touched:
                doc = await miner_stats(s, address)
                hub.publish(f"miner_stats:{address}", encode("miner_stats", "miner_stats", doc))

    async def health(self) -> dict[str, Any]:
        """Indexed height and websocket figures for `/health` (never fails the service)."""
        try:
            async with self.db.read() as s:
                m = await load_meta(s)
        except Exception as exc:
            return {"ok": False, "required": False, "error": type(exc).__name__}
        return {
            "ok": True,
            "required": False,
            "indexed_height": m.height if m is not None else 0,
            "ws_clients": sum(len(c) for c in self.hub.channels.values()),
            "ws_dropped_slow": self.hub.dropped_slow,
        }

    # -- held-out loss of adapter versions ----------------------------------------------

    async def poll_losses_forever(self) -> None:
        while True:
            try:
                found = await self.poll_losses()
            except Exception:
                log.exception("explorer: adapter loss poll failed")
                found = []
            for version in found:
                async with self.db.read() as s:
                    row = await s.get(IxAdapterVersion, version)
                    if row is not None:
                        text = encode("adapter_version", "training_metrics", version_doc(row))
                        self.hub.publish("training_metrics", text)
            await asyncio.sleep(LOSS_POLL_S)

    async def poll_losses(self) -> list[int]:
        """Ask each proposer that made a version without a loss for its `/stats`."""
        async with self.db.read() as s:
            rows = await s.execute(
                select(IxAdapterVersion.version, IxNode.endpoint)
                .join(
                    IxNode,
                    (IxNode.address == IxAdapterVersion.proposer) & (IxNode.role == "proposer"),
                )
                .where(IxAdapterVersion.heldout_loss.is_(None))
            )
            wanted: dict[str, list[int]] = {}
            for version, endpoint in rows:
                if endpoint.startswith(("http://", "https://")):
                    wanted.setdefault(endpoint, []).append(int(version))
        updated: list[int] = []
        for endpoint, versions in wanted.items():
            losses = await self._proposer_losses(endpoint)
            async with self.db.write() as s, s.begin():
                for version in versions:
                    if version not in losses:
                        continue
                    row = await s.get(IxAdapterVersion, version)
                    if row is not None and row.heldout_loss is None:
                        row.heldout_loss, row.base_loss = losses[version]
                        updated.append(version)
        return updated

    async def _proposer_losses(self, endpoint: str) -> dict[int, tuple[float, float | None]]:
        try:
            response = await self.runtime.http.get(endpoint.rstrip("/") + "/stats", timeout=5.0)
            doc = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        out: dict[int, tuple[float, float | None]] = {}
        versions = doc.get("versions") if isinstance(doc, dict) else None
        for entry in versions if isinstance(versions, list) else []:
            if not isinstance(entry, dict):
                continue
            loss, base = entry.get("heldout_loss"), entry.get("base_loss")
            version = entry.get("version")
            if isinstance(version, int) and isinstance(loss, int | float):
                out[version] = (float(loss), float(base) if isinstance(base, int | float) else None)
        return out


def version_doc(v: IxAdapterVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "round": v.round,
        "height": v.height,
        "cid": v.cid,
        "submissions": json.loads(v.submission_ids),
        "heldout_loss": v.heldout_loss,
        "base_loss": v.base_loss,
    }


async def training_messages(s: AsyncSession, summary: BlockSummary, committed_ms: int) -> list[str]:
    """Round progress at this block, and each adapter version it approved."""
    m = await explorer.meta(s)
    out = []
    rnd = await s.get(IxRound, explorer.current_round(m))
    if rnd is not None:
        length = rnd.close_height - rnd.open_height + 1
        progress = {
            "height": m.height,
            "round": rnd.number,
            "status": rnd.status,
            "open_height": rnd.open_height,
            "close_height": rnd.close_height,
            "progress": min(1.0, (m.height - rnd.open_height + 1) / length),
            "submissions": rnd.submissions,
            "verified": rnd.verified,
            "rejected": rnd.rejected,
            "adapter_version": rnd.adapter_version,
            "committed_at": committed_ms,
        }
        out.append(encode("round_progress", "training_metrics", progress))
    for version in summary.adapter_versions:
        row = await s.get(IxAdapterVersion, version)
        if row is not None:
            out.append(encode("adapter_version", "training_metrics", version_doc(row)))
    return out


async def miner_stats(s: AsyncSession, address: str) -> dict[str, Any]:
    acc = await s.get(IxAccount, address)
    doc = explorer.account_doc(acc, address)
    node = await s.get(IxNode, ("miner", address))
    doc["node"] = explorer.node_doc(node) if node is not None else None
    return doc


def explorer_service(runtime: Runtime) -> Explorer:
    found = runtime.services.get(SERVICE_KEY)
    if isinstance(found, Explorer):
        return found
    service = Explorer(runtime)
    runtime.services[SERVICE_KEY] = service
    runtime.services.setdefault("health_checks", {})["explorer"] = service.health
    return service
