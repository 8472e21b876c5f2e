"""Wiring of the paid chat path into a running backend: the `ChatService`, its workers
(node discovery and probes, operator payouts) and its health checks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from r3mes.backend.runtime import Runtime
from r3mes.backend.services.chat import ChatService
from r3mes.backend.services.gateway import Gateway
from r3mes.backend.services.limits import Limiter, MemoryLimiter, RedisLimiter
from r3mes.backend.services.metrics import GatewayMetrics
from r3mes.backend.services.nodes import LedgerNodes, NodeDirectory, follow, parse_static
from r3mes.backend.services.payouts import PayoutJob, payout_loop
from r3mes.backend.services.upstream_http import UpstreamTransport
from r3mes.errors import R3mesError

log = logging.getLogger(__name__)


def chat_service(runtime: Runtime) -> ChatService:
    """The app's `ChatService`, built on first use and kept in `runtime.services`."""
    found = runtime.services.get("chat")
    if isinstance(found, ChatService):
        return found
    settings = runtime.settings
    metrics = GatewayMetrics()
    directory = NodeDirectory(
        http=runtime.http,
        failures_to_trip=settings.node_failures_to_trip,
        cooldown_s=settings.node_cooldown_s,
        probe_interval_s=settings.node_probe_interval_s,
        default_capacity=settings.node_capacity_default,
        static=parse_static(settings.serving_endpoints, capacity=settings.node_capacity_default),
    )
    directory.update([])
    limiter: Limiter
    if runtime.redis is not None:
        limiter = RedisLimiter(runtime.redis, prefix=settings.redis_prefix)
    else:
        limiter = MemoryLimiter()
    service = ChatService(
        settings=settings,
        db=runtime.db,
        directory=directory,
        gateway=Gateway(
            directory=directory,
            http=_upstream_client(),
            metrics=metrics,
            attempts=settings.chat_attempts,
            first_byte_timeout_s=settings.chat_first_byte_timeout_s,
            timeout_s=settings.chat_upstream_timeout_s,
        ),
        limiter=limiter,
        metrics=metrics,
    )
    runtime.services["chat"] = service
    checks = runtime.services.setdefault("health_checks", {})
    checks["serving_nodes"] = _nodes_check(directory)
    return service


def _upstream_client() -> httpx.AsyncClient:
    """Connections to serving nodes: pooled and kept alive (a request is one hop more), on
    the gateway's own transport (`upstream_http.py`: httpcore's pool cost half the CPU of a
    chat request)."""
    transport = UpstreamTransport(max_connections=1024, max_idle_per_origin=256)
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)


def _nodes_check(directory: NodeDirectory) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def check() -> dict[str, Any]:
        return directory.describe()

    return check


def chat_workers(runtime: Runtime) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """Node discovery and probes always; the payout job when the treasury key unlocks."""
    service = chat_service(runtime)
    settings = runtime.settings
    ledger = LedgerNodes(runtime.http, settings.chain_rpc) if settings.follow_chain else None
    if ledger is not None:
        runtime.services["health_checks"]["ledger"] = _ledger_check(service.directory, ledger)
    found: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (
            "serving-nodes",
            lambda: follow(service.directory, ledger, poll_s=settings.node_refresh_s),
        ),
        ("chat-upstream-close", lambda: _close_on_exit(service.gateway.http)),
    ]
    job = payout_job(runtime, service.metrics)
    if job is not None:
        every, poll = settings.payout_every_blocks, settings.node_refresh_s
        found.append(
            ("operator-payouts", lambda: payout_loop(job, every_blocks=every, poll_s=poll))
        )
    return found


def payout_job(runtime: Runtime, metrics: GatewayMetrics) -> PayoutJob | None:
    """The payout job, if the ledger is followed and the treasury key can be unlocked."""
    settings = runtime.settings
    passphrase = settings.treasury_passphrase.get_secret_value()
    if not settings.follow_chain or not passphrase:
        log.info("operator payouts are off (no treasury passphrase or no ledger)")
        return None
    from r3mes.chain.client import AsyncBlockchainClient
    from r3mes.chain.keystore import Keystore
    from r3mes.paths import Home

    try:
        key = Keystore(Home(root=settings.home).keys).load(
            settings.treasury_key, passphrase=passphrase
        )
    except R3mesError as exc:
        log.warning("operator payouts are off: treasury key %r: %s", settings.treasury_key, exc)
        return None
    return PayoutJob(
        db=runtime.db,
        chain=AsyncBlockchainClient(settings.chain_rpc),
        http=runtime.http,
        rpc_url=settings.chain_rpc,
        key=key,
        share_bps=settings.operator_share_bps,
        metrics=metrics,
    )


def _ledger_check(
    directory: NodeDirectory, ledger: LedgerNodes
) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def check() -> dict[str, Any]:
        try:
            height = await ledger.height()
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": type(exc).__name__}
        return {"ok": True, "height": height, "nodes_seen_at": directory.chain_height}

    return check


async def _close_on_exit(http: httpx.AsyncClient) -> None:
    """Hold the upstream client open for the app's life; close it at shutdown."""
    try:
        await asyncio.Event().wait()
    finally:
        await http.aclose()
