"""Paid-chat test helpers: the backend on a real uvicorn socket, funded accounts with keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from r3mes.backend.app import create_app
from r3mes.backend.db.engine import Database
from r3mes.backend.services import credits, keys
from r3mes.backend.settings import BackendSettings
from r3mes.chain.crypto import SigningKey
from support.net import free_port
from support.server_thread import ServerThread


@dataclass(frozen=True)
class Funded:
    account_id: int
    address: str
    key: str


async def funded_key(
    settings: BackendSettings,
    amount: int,
    *,
    scopes: tuple[str, ...] = ("chat", "read"),
    address: str | None = None,
) -> Funded:
    """An account (of `address`, or a new one) holding `amount` credits more (recorded as a
    deposit) and an API key for it."""
    db = Database(settings)
    try:
        address = address or SigningKey.generate().address
        async with db.write() as s, s.begin():
            account_id = await credits.ensure_account(s, address=address)
            if amount:
                await credits.deposit(
                    s, account_id=account_id, amount=amount, idempotency_key=f"test:{address}"
                )
            _, key = await keys.create_key(
                s,
                pepper=settings.key_pepper.encode(),
                account_id=account_id,
                name="test",
                scopes=list(scopes),
                expires_at=None,
                max_keys=10,
            )
        return Funded(account_id, address, key)
    finally:
        await db.dispose()


async def balance(settings: BackendSettings, account_id: int) -> credits.Balance:
    db = Database(settings)
    try:
        async with db.read() as s:
            return await credits.balance(s, account_id=account_id)
    finally:
        await db.dispose()


class BackendServer:
    """`create_app(settings)` served by uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings.model_copy(update={"port": free_port()})
        self.url = f"http://127.0.0.1:{self.settings.port}"
        self.app = create_app(self.settings)
        self.upstreams: list[Any] = []
        """Stub serving nodes a test started for this backend (for its own bookkeeping)."""
        self._server = ServerThread(
            self.app, port=self.settings.port, name="test-backend", timeout_graceful_shutdown=2
        )

    def start(self, *, wait_nodes: int = 0) -> BackendServer:
        self._server.start()
        if wait_nodes:
            try:
                self.wait_nodes(wait_nodes)
            except BaseException:
                self.stop()
                raise
        return self

    def health(self) -> dict[str, object]:
        doc: dict[str, object] = httpx.get(f"{self.url}/health", timeout=30).json()
        return doc

    def wait_nodes(self, count: int, timeout_s: float = 60) -> None:
        """Until `count` serving nodes answer their probes (routable)."""
        deadline = time.monotonic() + timeout_s
        while True:
            checks = self.health()["checks"]
            nodes = checks.get("serving_nodes", {}).get("nodes", {})  # type: ignore[attr-defined]
            if sum(1 for n in nodes.values() if n["ok"]) >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"serving nodes not routable: {nodes}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.stop()


@contextmanager
def serving_backend(settings: BackendSettings, *, wait_nodes: int = 0) -> Iterator[BackendServer]:
    server = BackendServer(settings).start(wait_nodes=wait_nodes)
    try:
        yield server
    finally:
        server.stop()
