"""Follow the ledger block by block and hand every block to registered handlers.

One follower runs per backend process. It catches up by height through the ledger's
JSON-RPC (`status`, `block`, `block_results`), then waits for the next block: woken by the
RPC websocket's `NewBlock` subscription, or by polling when the socket is down.

Each block is applied in **one write transaction** per block: every handler whose cursor
(`chain_cursors(name, height)`) is just below the block runs, and its cursor moves to the
block's height in the same transaction. A crash anywhere before the commit leaves nothing
behind; after it, everything. So a restart resumes with no gap and no duplicate, and two
backend processes sharing one database never apply a block twice (the cursor row is locked
`FOR UPDATE` on PostgreSQL; SQLite serialises writers with `BEGIN IMMEDIATE`).

A handler is `async def handler(session, block) -> None`; it writes through `session` and
must not commit. If it raises, the block's transaction rolls back and the follower retries
the same block after a pause (handlers never see a gap). Listeners (`add_listener`) are told
about each new block after it is committed, best-effort (a cache refresh, a websocket push).

    follower = chain_follower(runtime)
    follower.register("deposits", deposits.handler(runtime))
    runtime.spawn("chain-follower", follower.run)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from r3mes.backend.db.accounts import ChainCursor
from r3mes.backend.db.engine import Database
from r3mes.chain.errors import TxDecodeError
from r3mes.chain.msgs import Msg
from r3mes.chain.tx import decode_tx

if TYPE_CHECKING:
    from r3mes.backend.runtime import Runtime

log = logging.getLogger(__name__)

Handler = Callable[[AsyncSession, "ChainBlock"], Awaitable[None]]
Listener = Callable[["ChainBlock"], Awaitable[None]]

SERVICE_KEY = "chain_follower"
PREFETCH = 8
"""Blocks fetched ahead of the one being applied while catching up."""
RETRY_S = 2.0
"""Pause after a failed fetch or a failed block before trying again."""


class ChainFollowError(Exception):
    """The ledger answered something the follower cannot use."""


@dataclass(frozen=True)
class ChainTx:
    """One transaction of a block, decoded, with its result."""

    hash: str
    index: int
    code: int
    """0: applied; anything else: rejected in the block (its messages had no effect)."""
    log: str
    events: tuple[Mapping[str, Any], ...]
    """ABCI events as the RPC shows them: {"type", "attributes": [{"key", "value"}]}."""
    signer: str | None
    """The signing account; None if the bytes do not decode as an R3MES tx."""
    msgs: tuple[Msg, ...]
    raw: bytes = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True)
class ChainBlock:
    height: int
    hash: str
    time: datetime
    chain_id: str
    proposer: str
    txs: tuple[ChainTx, ...]
    events: tuple[Mapping[str, Any], ...]
    """Block-level (begin and end) events."""
    header: Mapping[str, Any] = field(repr=False)
    """The block header JSON exactly as the RPC answered it."""


# -- the ledger's RPC ---------------------------------------------------------------------


class ChainRpc:
    """The few JSON-RPC calls the follower needs, over a shared `httpx.AsyncClient`."""

    def __init__(self, url: str, http: httpx.AsyncClient, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.http = http
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            response = await self.http.post(self.url + "/", json=body, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise ChainFollowError(f"ledger RPC {self.url} {method}: {exc!r}") from exc
        try:
            doc = response.json()
        except ValueError as exc:
            raise ChainFollowError(f"ledger RPC {method} answered non-JSON") from exc
        if not isinstance(doc, dict) or "result" not in doc:
            error = doc.get("error") if isinstance(doc, dict) else None
            raise ChainFollowError(f"ledger RPC {method} failed: {error or response.status_code}")
        return doc["result"]

    async def latest_height(self) -> int:
        status = await self.call("status")
        try:
            return int(status["sync_info"]["latest_block_height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainFollowError("ledger status has no latest_block_height") from exc

    async def block(self, height: int) -> ChainBlock:
        block_doc, results = await asyncio.gather(
            self.call("block", height=str(height)), self.call("block_results", height=str(height))
        )
        try:
            return parse_block(block_doc, results)
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainFollowError(f"block {height} is malformed: {exc!r}") from exc


def parse_block(block_doc: Mapping[str, Any], results: Mapping[str, Any]) -> ChainBlock:
    """A `ChainBlock` from the RPC's `block` and `block_results` answers."""
    header = block_doc["block"]["header"]
    raws = [base64.b64decode(t) for t in block_doc["block"]["data"].get("txs") or []]
    tx_results = results.get("txs_results") or []
    if len(tx_results) != len(raws):
        raise ValueError(f"{len(raws)} txs but {len(tx_results)} results")
    txs = tuple(_tx(i, raw, res) for i, (raw, res) in enumerate(zip(raws, tx_results, strict=True)))
    if "time_ms" in header:
        time = datetime.fromtimestamp(int(header["time_ms"]) / 1000, UTC)
    else:
        time = datetime.fromisoformat(str(header["time"]).replace("Z", "+00:00"))
    events = results.get("finalize_block_events")
    if events is None:
        events = (results.get("begin_events") or []) + (results.get("end_events") or [])
    return ChainBlock(
        height=int(header["height"]),
        hash=str(block_doc.get("block_id", {}).get("hash", "")),
        time=time,
        chain_id=str(header.get("chain_id", "")),
        proposer=str(header.get("proposer_address", "")),
        txs=txs,
        events=tuple(events),
        header=header,
    )


def _tx(index: int, raw: bytes, result: Mapping[str, Any]) -> ChainTx:
    from r3mes.chain.tx import tx_hash

    try:
        decoded = decode_tx(raw)
        signer: str | None = decoded.signer
        msgs: tuple[Msg, ...] = decoded.msgs
    except TxDecodeError:
        signer, msgs = None, ()
    return ChainTx(
        hash=tx_hash(raw),
        index=index,
        code=int(result.get("code", 0)),
        log=str(result.get("log", "")),
        events=tuple(result.get("events") or ()),
        signer=signer,
        msgs=msgs,
        raw=raw,
    )


def event_attributes(event: Mapping[str, Any]) -> dict[str, str]:
    """An event's attributes as a dict (the last value wins for a repeated key)."""
    return {str(a["key"]): str(a["value"]) for a in event.get("attributes", ())}


# -- the follower -------------------------------------------------------------------------


@dataclass
class _Registered:
    name: str
    handler: Handler
    start_height: int


class ChainFollower:
    """Applies ledger blocks to the database through registered handlers (module docstring)."""

    def __init__(
        self,
        *,
        db: Database,
        rpc: ChainRpc,
        poll_s: float = 2.0,
        websocket: bool = True,
    ) -> None:
        self.db = db
        self.rpc = rpc
        self.poll_s = poll_s
        self.websocket = websocket
        self._handlers: list[_Registered] = []
        self._listeners: list[Listener] = []
        self._wake = asyncio.Event()
        self._ensured = False
        self.latest_seen = 0
        """Newest ledger height this follower has heard of."""
        self.applied = 0
        """Newest height this process applied (or found already applied)."""
        self.connected = False
        """Whether the NewBlock websocket subscription is up."""

    def register(self, name: str, handler: Handler, *, start_height: int = 1) -> None:
        """Add a handler; its cursor starts just below `start_height` the first time."""
        if any(r.name == name for r in self._handlers):
            raise ValueError(f"a chain handler named {name!r} is already registered")
        if start_height < 1:
            raise ValueError("start_height is a block height (>= 1)")
        self._handlers.append(_Registered(name, handler, start_height))
        self._ensured = False

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def handler_names(self) -> list[str]:
        return [r.name for r in self._handlers]

    async def cursors(self) -> dict[str, int]:
        """Each handler's last applied height (start_height - 1 before its first block)."""
        if not self._ensured:
            async with self.db.write() as s, s.begin():
                await self._ensure_cursors(s)
            self._ensured = True
        async with self.db.read() as s:
            rows = await s.execute(select(ChainCursor.name, ChainCursor.height))
            return {str(n): int(h) for n, h in rows if n in self.handler_names}

    async def step(self) -> int:
        """Apply every block up to the ledger's latest height; returns how many were applied.

        Blocks are fetched up to `PREFETCH` ahead while earlier ones are applied, in order.
        """
        if not self._handlers:
            return 0
        latest = await self.rpc.latest_height()
        self.latest_seen = max(self.latest_seen, latest)
        done = 0
        height = min((await self.cursors()).values()) + 1
        ahead: deque[asyncio.Task[ChainBlock]] = deque()
        fetch = height
        try:
            while height <= latest:
                while fetch <= latest and len(ahead) < PREFETCH:
                    ahead.append(asyncio.create_task(self.rpc.block(fetch)))
                    fetch += 1
                block = await ahead.popleft()
                if await self.apply(block):
                    done += 1
                self.applied = height
                await self._tell_listeners(block)
                height += 1
        finally:
            for task in ahead:
                task.cancel()
            await asyncio.gather(*ahead, return_exceptions=True)
        return done

    async def _tell_listeners(self, block: ChainBlock) -> None:
        for listener in self._listeners:
            try:
                await listener(block)
            except Exception:
                log.exception("chain listener failed on block %d", block.height)

    async def apply(self, block: ChainBlock) -> bool:
        """Run the handlers that still need `block` and move their cursors, atomically."""
        ran = False
        async with self.db.write() as s, s.begin():
            for registered in self._handlers:
                cursor = await self._locked_cursor(s, registered)
                if cursor >= block.height:
                    continue  # applied already (by us before a restart, or another process)
                if cursor != block.height - 1:
                    raise ChainFollowError(
                        f"handler {registered.name} is at height {cursor}; "
                        f"cannot apply block {block.height} without a gap"
                    )
                await registered.handler(s, block)
                await s.execute(
                    update(ChainCursor)
                    .where(ChainCursor.name == registered.name)
                    .values(height=block.height)
                )
                ran = True
        return ran

    async def run(self) -> None:
        """Follow forever: catch up, then wait for the next block (websocket or poll)."""
        watcher = (
            asyncio.create_task(self._watch(), name="r3mes-backend-chain-follower-websocket")
            if self.websocket
            else None
        )
        try:
            while True:
                try:
                    await self.step()
                except ChainFollowError as exc:
                    log.warning("chain follower: %s; retrying in %.0f s", exc, RETRY_S)
                    await asyncio.sleep(RETRY_S)
                    continue
                except Exception:
                    log.exception("chain follower failed; retrying in %.0f s", RETRY_S)
                    await asyncio.sleep(RETRY_S)
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def health(self) -> dict[str, Any]:
        return {
            "ok": self.applied > 0 or self.latest_seen == 0,
            "required": False,
            "height": self.applied,
            "latest": self.latest_seen,
            "websocket": self.connected,
        }

    async def _watch(self) -> None:
        """Keep a NewBlock subscription open; each block sets the wake event."""
        import websockets

        url = self.rpc.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "subscribe",
            "params": {"query": "tm.event='NewBlock'"},
        }
        while True:
            try:
                async with websockets.connect(
                    url + "/websocket", open_timeout=5, close_timeout=2, max_size=8 << 20
                ) as ws:
                    await ws.send(json.dumps(request))
                    self.connected = True
                    async for message in ws:
                        height = _new_block_height(message)
                        if height is not None:
                            self.latest_seen = max(self.latest_seen, height)
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("ledger websocket %s: %r; polling until it is back", url, exc)
            self.connected = False
            await asyncio.sleep(self.poll_s)

    async def _ensure_cursors(self, s: AsyncSession) -> None:
        present = set((await s.scalars(select(ChainCursor.name))).all())
        for registered in self._handlers:
            if registered.name in present:
                continue
            try:
                async with s.begin_nested():
                    s.add(ChainCursor(name=registered.name, height=registered.start_height - 1))
                    await s.flush()
            except IntegrityError:
                pass  # another process created it first

    async def _locked_cursor(self, s: AsyncSession, registered: _Registered) -> int:
        query = select(ChainCursor.height).where(ChainCursor.name == registered.name)
        if not self.db.is_sqlite:
            query = query.with_for_update()
        found = await s.scalar(query)
        if found is None:
            await self._ensure_cursors(s)
            found = await s.scalar(query)
        assert found is not None
        return int(found)


def _new_block_height(message: str | bytes) -> int | None:
    try:
        doc = json.loads(message)
        value = doc["result"]["data"]["value"]
        return int(value["block"]["header"]["height"])
    except (ValueError, KeyError, TypeError):
        return None


def chain_follower(runtime: Runtime) -> ChainFollower:
    """This process's follower (created on first use and kept in `runtime.services`)."""
    found = runtime.services.get(SERVICE_KEY)
    if isinstance(found, ChainFollower):
        return found
    follower = ChainFollower(db=runtime.db, rpc=ChainRpc(runtime.settings.chain_rpc, runtime.http))
    runtime.services[SERVICE_KEY] = follower
    runtime.services.setdefault("health_checks", {})["chain"] = follower.health
    return follower
