"""The serving node role: serve chat with the base model and the approved adapters.

On start it syncs the registry from the ledger, makes the approved base model and the
latest adapter version ready (`UnifiedRegistry.ensure_ready_atomic`), loads them into the
multi-LoRA `ServingEngine` and serves the OpenAI-compatible API; it registers on the
ledger as a serving node. Its loop sends heartbeats and, whenever the ledger approves a
newer adapter version, installs it and hot-swaps it into the running engine - no restart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r3mes.node.errors import NodeError, ValidationError
from r3mes.node.runtime.service import RoleService, ServiceConfig

if TYPE_CHECKING:
    from r3mes.node.ledger_role import RoleDeps
    from r3mes.registry.unified import UnifiedRegistry
    from r3mes.serve.server import ServerThread

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingSettings:
    """Everything a serving node needs besides its key."""

    service: ServiceConfig
    chain_url: str
    blocks: Path
    """Root of the local blockstore the registry fetches from first."""
    ipfs_url: str | None = None
    """Kubo RPC API to fetch from when the local blockstore lacks an artifact."""
    gateway_url: str | None = None
    """IPFS HTTP gateway, the last read fallback."""
    api_port: int = 0
    """Port of the OpenAI-compatible API (0 picks a free one)."""
    heartbeat_s: float = 10.0
    """Seconds between ledger heartbeats."""
    capacity: int = 8
    """Concurrent sequences announced in heartbeats (the engine's batch size)."""

    def __post_init__(self) -> None:
        if self.service.role != "serving":
            raise ValidationError("ServingSettings.service.role must be 'serving'")
        if not 0 <= self.api_port <= 65535:
            raise ValidationError(f"api_port {self.api_port} out of range")
        if self.heartbeat_s <= 0:
            raise ValidationError("heartbeat_s must be positive")


class ServingNode(RoleService):
    """The serving node service."""

    def __init__(self, settings: ServingSettings, deps: RoleDeps) -> None:
        from prometheus_client import Gauge

        from r3mes.chain.client import BlockchainClient

        super().__init__(settings.service, shutdown=deps.shutdown)
        self.settings = settings
        self.key = deps.key
        self.address = deps.key.address
        self.client = deps.client or BlockchainClient(settings.chain_url)
        self.artifacts: UnifiedRegistry = self._artifact_registry()
        self.server: ServerThread | None = None
        self.adapter_id = ""
        self.adapter_version = 0
        self.swaps = 0
        self._last_heartbeat = 0.0
        self._version_gauge = Gauge(
            "r3mes_serving_adapter_version",
            "Adapter version being served",
            registry=self.registry,
        )

    def _artifact_registry(self) -> UnifiedRegistry:
        from r3mes.paths import Home
        from r3mes.registry.download import (
            ArtifactFetcher,
            BlockstoreFetcher,
            DownloadManager,
            IpfsFetcher,
        )
        from r3mes.registry.unified import UnifiedRegistry
        from r3mes.storage.blockstore import Blockstore
        from r3mes.storage.kubo import KuboClient

        fetchers: list[ArtifactFetcher] = [BlockstoreFetcher(Blockstore(self.settings.blocks))]
        if self.settings.ipfs_url:
            fetchers.append(IpfsFetcher(KuboClient(self.settings.ipfs_url), "kubo"))
        if self.settings.gateway_url:
            gateway = KuboClient.gateway(self.settings.gateway_url)
            fetchers.append(IpfsFetcher(gateway, "ipfs gateway"))
        manager = DownloadManager(fetchers)
        return UnifiedRegistry(
            home=Home(root=self.settings.service.state_dir),
            downloader=manager,
            source=self.client,  # lists ArtifactRecords; the registry keeps the installable ones
        )

    @property
    def api_url(self) -> str:
        return self.server.url if self.server is not None else ""

    # -- lifecycle --------------------------------------------------------------------

    def on_start(self) -> None:
        from r3mes.node.registration import ensure_registered
        from r3mes.serve.engine import EngineConfig
        from r3mes.serve.server import ServerThread
        from r3mes.serve.settings import ServerSettings

        self.adapter_id = self.client.params().adapter_id
        self.artifacts.sync_all()
        ready = self._ensure_ready()
        assert ready.model_path is not None
        engine = self._engine(ready.model_path, EngineConfig(max_batch_size=self.settings.capacity))
        self.server = ServerThread(
            engine, ServerSettings(), host=self.config.host, port=self.settings.api_port
        ).start()
        self._swap_in(ready.adapter_paths)
        ensure_registered(self.client, self.key, role="serving", endpoint=self.api_url)
        logger.info("serving API at %s", self.api_url)

    def _engine(self, model_path: Path, config: Any) -> Any:
        """The multi-LoRA engine over the approved model, named by its registry id (the
        installed folder is named after the version)."""
        from r3mes.serve.server import build_engine

        engine = build_engine(model_path, config=config)
        engine.model_name = max(self.artifacts.models.records(), key=lambda r: r.approved_height).id
        return engine

    def on_stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.client.close()

    def _ensure_ready(self) -> Any:
        adapters = [self.adapter_id] if self._has_adapter() else []
        ready = self.artifacts.ensure_ready_atomic(required_adapters=adapters)
        if not ready.success:
            raise NodeError(f"could not prepare the model and adapter: {ready.error_message}")
        return ready

    def _has_adapter(self) -> bool:
        return any(r.id == self.adapter_id for r in self.artifacts.adapters.records())

    def _swap_in(self, adapter_paths: dict[str, Path]) -> None:
        path = adapter_paths.get(self.adapter_id)
        if path is None or self.server is None:
            return
        record = self.artifacts.adapters.get(self.adapter_id)
        version = record.version
        if version == self.adapter_version:
            return
        self.server.engine.load_adapter(self.adapter_id, path)
        if self.adapter_version:
            self.swaps += 1
        self.adapter_version = version
        self._version_gauge.set(version)
        logger.info("now serving %s v%d", self.adapter_id, version)

    # -- the loop ---------------------------------------------------------------------

    def step(self) -> bool:
        did = False
        self.artifacts.adapters.sync_from_chain()
        if self._has_adapter():
            latest = self.artifacts.adapters.get(self.adapter_id).version
            if latest > self.adapter_version:
                self._swap_in(self._ensure_ready().adapter_paths)
                did = True
        if time.monotonic() - self._last_heartbeat >= self.settings.heartbeat_s:
            self._heartbeat()
        return did

    def _heartbeat(self) -> None:
        from r3mes.chain.msgs import ServingHeartbeat

        msg = ServingHeartbeat(
            creator=self.address,
            endpoint=self.api_url,
            adapter_version=self.adapter_version,
            capacity=self.settings.capacity,
        )
        self.client.sign_and_broadcast(self.key, [msg])
        self._last_heartbeat = time.monotonic()

    def role_stats(self) -> dict[str, Any]:
        engine = self.server.engine.stats() if self.server is not None else None
        return {
            "address": self.address,
            "api_url": self.api_url,
            "adapter": self.adapter_id,
            "adapter_version": self.adapter_version,
            "hot_swaps": self.swaps,
            "engine": engine.__dict__ if engine is not None else None,
        }
