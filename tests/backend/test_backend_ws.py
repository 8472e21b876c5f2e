"""Websockets against a real devnet and a real uvicorn server on 127.0.0.1: every block
reaches every client in order, the public channels and their schema, the private usage
feed with token auth, ping/pong and idle close, the per-IP cap, and (on the hub itself)
a stalled client dropped with 4008 while the others get every message."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import insert
from support.backend import make_settings
from support.net import free_port
from support.server_thread import ServerThread

from r3mes.backend.app import create_app
from r3mes.backend.db.chat import ChatRequest
from r3mes.backend.db.engine import Database
from r3mes.backend.services import credits, keys
from r3mes.backend.services.ws import CLOSE_SLOW, Hub
from r3mes.chain.crypto import SigningKey
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.paths import Home

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
USER = SigningKey(secret=bytes([77]) * 32)
PING_S = 2.0
"""The server's ping interval: a client silent for three is closed. At 0.3 s a busy test
process sometimes answered too late and was closed mid-test."""


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetNode]:
    home = Home(root=tmp_path_factory.mktemp("devnet"))
    init_devnet(home, devnet_genesis(accounts={USER.address: 1000}, round_length=5))
    node = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.1))
    node.start()
    yield node
    node.stop()


class Server(ServerThread):
    def __init__(self, app: Any) -> None:
        super().__init__(
            app,
            port=free_port(),
            name="test-ws-backend",
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=5,
        )

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture
def server(devnet: DevnetNode, tmp_path: Path, database_url: str) -> Iterator[Server]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        chain_rpc=devnet.url,
        follow_chain=True,
        ws_max_per_ip=6,
        ws_ping_interval_s=PING_S,
    )
    with Server(create_app(settings)) as s:
        s.settings = settings  # type: ignore[attr-defined]
        yield s


async def messages(ws: Any, n: int, kind: str, timeout: float = 60) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            doc = json.loads(await ws.recv())
            if doc["type"] == kind:
                out.append(doc)
            elif doc["type"] == "ping":  # what a live client does
                await ws.send(json.dumps({"type": "pong"}))
    return out


async def test_every_block_reaches_every_client_in_order(server: Server) -> None:
    async with (
        websockets.connect(server.url("/ws/blocks")) as a,
        websockets.connect(server.url("/ws/blocks")) as b,
    ):
        got_a, got_b = await asyncio.gather(messages(a, 15, "block"), messages(b, 15, "block"))
    heights_a = [m["data"]["height"] for m in got_a]
    heights_b = [m["data"]["height"] for m in got_b]
    # A client joining late gets the last block first, then each new one, none skipped.
    common = sorted(set(heights_a) & set(heights_b))
    assert len(common) >= 12 and common == list(range(common[0], common[-1] + 1))
    assert heights_a[1:] == list(range(heights_a[1], heights_a[1] + 14))
    doc = got_a[-1]
    assert doc["channel"] == "blocks"
    assert {"height", "hash", "time_ms", "num_txs", "round", "tx_hashes", "committed_at"} <= set(
        doc["data"]
    )


async def test_public_channels_and_miner_stats(server: Server) -> None:
    async with websockets.connect(server.url("/ws/network_status")) as ws:
        status = (await messages(ws, 2, "network_status"))[-1]
    assert status["channel"] == "network_status" and status["data"]["height"] > 0
    async with websockets.connect(server.url("/ws/training_metrics")) as ws:
        progress = (await messages(ws, 2, "round_progress"))[-1]["data"]
    assert 0 < progress["progress"] <= 1 and progress["round"] >= 1
    async with websockets.connect(server.url(f"/ws/miner_stats?address={USER.address}")) as ws:
        hello = (await messages(ws, 1, "miner_stats"))[0]["data"]
    assert hello["address"] == USER.address and hello["balance"] == 1000
    async with websockets.connect(server.url("/ws/miner_stats?address=nope")) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
    health = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=30).json()
    assert health["checks"]["explorer"]["indexed_height"] > 0


async def test_ping_pong_and_idle_close(server: Server) -> None:
    async with websockets.connect(server.url("/ws/blocks")) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert (await messages(ws, 1, "pong"))[0] == {"type": "pong"}
        assert (await messages(ws, 1, "ping"))[0]["ts"] > 0
    # A client that never answers is closed with 4000 after three ping intervals.
    async with websockets.connect(server.url("/ws/network_status")) as ws:
        started = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(60):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    # not before three ping intervals; the upper bound only says "not never" (the server's
    # timers run late on a loaded machine)
    assert 3 * PING_S - 0.5 < time.monotonic() - started < 60


async def test_connections_per_ip_are_capped(server: Server) -> None:
    opened = [await websockets.connect(server.url("/ws/blocks")) for _ in range(6)]
    try:
        async with websockets.connect(server.url("/ws/blocks")) as extra:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(60):
                    while True:
                        await extra.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
    finally:
        for ws in opened:
            await ws.close()
    async with websockets.connect(server.url("/ws/blocks")) as again:  # freed again
        assert (await messages(again, 1, "block"))[0]["data"]["height"] > 0


@pytest.fixture
async def api_key(server: Server) -> AsyncIterator[tuple[str, int, Database]]:
    db = Database(server.settings)  # type: ignore[attr-defined]
    async with db.write() as s, s.begin():
        account_id = await credits.ensure_account(s, address=USER.address)
        await credits.grant(
            s, account_id=account_id, amount=500, idempotency_key="test-grant", actor="test"
        )
        _, token = await keys.create_key(
            s,
            pepper=b"test-key-pepper-0123456789abcdef",
            account_id=account_id,
            name="ws",
            scopes=["read"],
            expires_at=None,
            max_keys=10,
        )
    yield token, account_id, db
    await db.dispose()


async def test_usage_feed_needs_a_token_and_streams_charges(
    server: Server, api_key: tuple[str, int, Database]
) -> None:
    token, account_id, db = api_key
    async with websockets.connect(server.url("/ws/usage")) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    async with websockets.connect(server.url("/ws/usage?token=r3k_wrong")) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(server.url("/ws/usage"), additional_headers=headers) as ws:
        first = (await messages(ws, 1, "usage"))[0]["data"]
        assert first["balance"] == {"available": 500, "held": 0} and first["charges"] == []
        async with db.write() as s, s.begin():
            await s.execute(
                insert(ChatRequest).values(
                    request_id="usage-1",
                    account_id=account_id,
                    model="m",
                    status="ok",
                    prompt_tokens=3,
                    completion_tokens=4,
                    credits=7,
                    created_at=dt.datetime.now(dt.UTC),
                    latency_ms=5,
                )
            )
        update = (await messages(ws, 1, "usage"))[0]["data"]
    assert [c["credits"] for c in update["charges"]] == [7]


class FakeSocket:
    """A peer for the hub: a stalled one never finishes a send (a reader that stopped)."""

    def __init__(self, *, stalled: bool) -> None:
        from starlette.websockets import WebSocketState

        self.stalled = stalled
        self.sent: list[str] = []
        self.closed_with: int | None = None
        self.application_state = WebSocketState.CONNECTED
        self._never = asyncio.Event()

    async def accept(self) -> None:
        return None

    async def send_text(self, text: str) -> None:
        if self.stalled:
            await self._never.wait()
        self.sent.append(text)

    async def receive_text(self) -> str:
        await self._never.wait()
        return ""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code


async def test_a_stalled_client_is_dropped_and_holds_nobody_up() -> None:
    hub = Hub(queue_size=3, max_per_ip=100, ping_interval_s=60)
    healthy = [FakeSocket(stalled=False) for _ in range(5)]
    stalled = FakeSocket(stalled=True)
    serving = [
        asyncio.create_task(hub.serve(ws, ip="10.0.0.1", key="blocks", hello=[]))  # type: ignore[arg-type]
        for ws in (*healthy, stalled)
    ]
    while hub.subscribers("blocks") < 6:
        await asyncio.sleep(0.01)
    for i in range(20):
        hub.publish("blocks", f"m{i}")  # synchronous: the stalled socket cannot hold it up
        await asyncio.sleep(0.005)
    async with asyncio.timeout(60):
        while stalled.closed_with is None:
            await asyncio.sleep(0.01)
    assert stalled.closed_with == CLOSE_SLOW and hub.dropped_slow == 1
    assert all(ws.sent == [f"m{i}" for i in range(20)] for ws in healthy)
    assert hub.subscribers("blocks") == 5
    for task in serving:
        task.cancel()
    await asyncio.gather(*serving, return_exceptions=True)
    assert hub.per_ip == {}
