"""CometBFT-shaped JSON-RPC over HTTP (+ websocket /subscribe) and the REST router.

Endpoints answer like a CometBFT node (`{"jsonrpc": "2.0", "id": -1, "result": ...}`,
heights as strings, tx bytes as base64), so tools written for CometBFT can read them.
Invalid input answers 400 and unknown objects 404 (clients must not retry those).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from r3mes import __version__
from r3mes.chain import abci
from r3mes.chain.engine import DevnetEngine
from r3mes.chain.rest import rest_router
from r3mes.chain.store import StoredTx
from r3mes.chain.transition import Block, BlockResult, Header, TxResult
from r3mes.chain.tx import MAX_TX_BYTES
from r3mes.chain.views import QueryError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 * MAX_TX_BYTES
MAX_COMMIT_WAIT_S = 30.0
MAX_SUBSCRIBERS = 64


class RpcError(Exception):
    def __init__(self, status: int, message: str, code: int = -32602) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def header_json(h: Header) -> dict[str, Any]:
    return {
        "chain_id": h.chain_id,
        "height": str(h.height),
        "time": rfc3339(h.time_ms),
        "time_ms": h.time_ms,
        "last_block_id": {"hash": h.last_block_hash.upper()},
        "app_hash": h.app_hash.upper(),
        "data_hash": h.data_hash.upper(),
        "proposer_address": h.proposer,
    }


def block_json(block: Block) -> dict[str, Any]:
    return {
        "block_id": {"hash": block.hash.upper()},
        "block": {
            "header": header_json(block.header),
            "data": {"txs": [base64.b64encode(t).decode() for t in block.txs]},
        },
    }


def tx_result_json(r: TxResult) -> dict[str, Any]:
    return {"code": r.code, "log": r.log, "events": [e.to_json() for e in r.events]}


def stored_tx_json(t: StoredTx) -> dict[str, Any]:
    return {
        "hash": t.hash,
        "height": str(t.height),
        "index": t.index,
        "tx_result": {"code": t.code, "log": t.log, "events": t.events},
        "tx": base64.b64encode(t.raw).decode(),
    }


def parse_bytes(value: str, what: str, limit: int = MAX_TX_BYTES) -> bytes:
    """CometBFT URI convention: 0x-prefixed hex, else (optionally quoted) base64."""
    text = value.strip().strip('"')
    if len(text) > 2 * limit + 2:
        raise RpcError(400, f"{what} is larger than {limit} bytes")
    try:
        if text.startswith(("0x", "0X")):
            return bytes.fromhex(text[2:])
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise RpcError(400, f"{what} must be 0x-hex or base64") from exc


def _height(engine: DevnetEngine, height: str | int | None) -> int:
    latest = engine.state.height
    if height in (None, "", 0, "0"):
        return latest
    try:
        value = int(str(height).strip('"'))
    except ValueError as exc:
        raise RpcError(400, "height must be an integer") from exc
    if not 1 <= value <= latest:
        raise RpcError(404, f"height {value} is not available (latest is {latest})")
    return value


class Methods:
    """The JSON-RPC methods, shared by GET /<method> and POST / dispatch."""

    def __init__(self, engine: DevnetEngine) -> None:
        self.engine = engine

    def status(self) -> dict[str, Any]:
        state, app_hash = self.engine.snapshot()
        found = self.engine.store.block(state.height) if state.height else None
        return {
            "node_info": {
                "network": state.chain_id,
                "version": __version__,
                "moniker": "r3mes-devnet",
            },
            "sync_info": {
                "latest_block_hash": found[0].hash.upper() if found else "",
                "latest_app_hash": app_hash.upper(),
                "latest_block_height": str(state.height),
                "latest_block_time": rfc3339(state.last_block_time_ms),
                "catching_up": False,
            },
            "mempool_size": self.engine.mempool_size(),
        }

    def block(self, height: str | None = None) -> dict[str, Any]:
        found = self.engine.store.block(_height(self.engine, height))
        if found is None:
            raise RpcError(404, "no block at that height yet")
        return block_json(found[0])

    def block_results(self, height: str | None = None) -> dict[str, Any]:
        h = _height(self.engine, height)
        results = self.engine.store.block_results(h)
        if results is None:
            raise RpcError(404, f"no results for height {h}")
        return {
            **results,
            "height": str(h),
            "finalize_block_events": results["begin_events"] + results["end_events"],
        }

    def broadcast_tx_sync(self, tx: str) -> dict[str, Any]:
        result = self.engine.submit(parse_bytes(tx, "tx"))
        return {
            "code": result.code,
            "data": "",
            "log": result.log,
            "codespace": "",
            "hash": result.hash,
        }

    def broadcast_tx_commit(self, tx: str, timeout: str | float = 10.0) -> dict[str, Any]:
        check = self.engine.submit(parse_bytes(tx, "tx"))
        out: dict[str, Any] = {
            "check_tx": {"code": check.code, "log": check.log},
            "hash": check.hash,
        }
        if check.code != 0:
            return {
                **out,
                "tx_result": {"code": check.code, "log": check.log, "events": []},
                "height": "0",
            }
        wait = min(float(timeout), MAX_COMMIT_WAIT_S)
        stored = self.engine.wait_for_tx(check.hash, timeout_s=wait)
        if stored is None:
            raise RpcError(503, f"tx {check.hash} not committed within {wait} s", code=-32603)
        return {
            **out,
            "tx_result": stored_tx_json(stored)["tx_result"],
            "height": str(stored.height),
        }

    def tx(self, hash: str) -> dict[str, Any]:
        digest = hash.strip('"').removeprefix("0x").removeprefix("0X").upper()
        if len(digest) != 64:
            raise RpcError(400, "hash must be 64 hex characters")
        found = self.engine.store.tx(digest)
        if found is None:
            raise RpcError(404, f"tx {digest} not found")
        return stored_tx_json(found)

    def tx_search(self, query: str, per_page: str | int = 30) -> dict[str, Any]:
        height, signer = parse_tx_query(query)
        limit = max(1, min(int(per_page), 100))
        found = self.engine.store.tx_search(height=height, signer=signer, limit=limit)
        return {"txs": [stored_tx_json(t) for t in found], "total_count": str(len(found))}

    def abci_query(self, path: str, data: str = "", height: str | None = None) -> dict[str, Any]:
        raw = parse_bytes(data, "data", limit=4096) if data else b""
        try:
            value = abci.query(self.engine.state, path.strip('"'), raw)
        except QueryError as exc:
            return {
                "response": {
                    "code": 1,
                    "log": str(exc),
                    "value": "",
                    "height": str(self.engine.state.height),
                }
            }
        return {
            "response": {
                "code": 0,
                "log": "",
                "value": base64.b64encode(value).decode(),
                "height": str(self.engine.state.height),
            }
        }


def parse_tx_query(query: str) -> tuple[int | None, str | None]:
    """Subset of CometBFT queries: tx.height=N, message.sender='addr', joined by AND."""
    height: int | None = None
    signer: str | None = None
    for clause in query.strip('"').split(" AND "):
        key, _, value = clause.partition("=")
        key, value = key.strip(), value.strip().strip("'")
        if key == "tx.height" and value.isdigit():
            height = int(value)
        elif key == "message.sender" and value:
            signer = value
        else:
            raise RpcError(400, "supported queries: tx.height=N and/or message.sender='addr'")
    return height, signer


def create_app(engine: DevnetEngine) -> FastAPI:
    """The node's HTTP app; nothing global, the engine is held on app.state."""
    app = FastAPI(title="R3MES ledger RPC", version=__version__)
    app.state.engine = engine
    methods = Methods(engine)
    app.include_router(rest_router())
    _install_errors(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return _rpc_error(413, f"request body limited to {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    for name in (
        "status",
        "block",
        "block_results",
        "broadcast_tx_sync",
        "broadcast_tx_commit",
        "tx",
        "tx_search",
        "abci_query",
    ):
        _route(app, name, getattr(methods, name))

    @app.post("/")
    async def jsonrpc(request: Request) -> JSONResponse:
        data = bytearray()
        async for chunk in request.stream():
            data.extend(chunk)
            if len(data) > MAX_BODY_BYTES:
                raise RpcError(413, f"request body limited to {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(data)
            name, params, rid = body["method"], body.get("params") or {}, body.get("id", -1)
            func = getattr(methods, name) if name in _METHODS else None
            if func is None or not isinstance(params, dict):
                raise RpcError(400, f"unknown method {name!r} or params not an object", -32601)
            result = await asyncio.to_thread(func, **{k: str(v) for k, v in params.items()})
        except (ValueError, KeyError, TypeError) as exc:
            raise RpcError(400, f"malformed JSON-RPC request: {exc}") from exc
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result})

    _install_websocket(app, engine)
    return app


_METHODS = {
    "status",
    "block",
    "block_results",
    "broadcast_tx_sync",
    "broadcast_tx_commit",
    "tx",
    "tx_search",
    "abci_query",
}


def _route(app: FastAPI, name: str, func: Any) -> None:
    async def handler(request: Request) -> JSONResponse:
        params = dict(request.query_params)
        try:
            result = await asyncio.to_thread(func, **params)
        except TypeError as exc:
            raise RpcError(400, f"bad parameters for {name}: {exc}") from exc
        except ValueError as exc:
            raise RpcError(400, f"bad parameter value for {name}: {exc}") from exc
        return JSONResponse({"jsonrpc": "2.0", "id": -1, "result": result})

    app.add_api_route(f"/{name}", handler, methods=["GET"], name=name)


def _rpc_error(status: int, message: str, code: int = -32602) -> JSONResponse:
    body = {
        "jsonrpc": "2.0",
        "id": -1,
        "error": {"code": code, "message": message, "data": message},
    }
    return JSONResponse(body, status_code=status)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RpcError)
    async def rpc_error(request: Request, exc: RpcError) -> JSONResponse:
        return _rpc_error(exc.status, exc.message, exc.code)

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"code": exc.status, "message": str(exc)}, status_code=exc.status)


def _install_websocket(app: FastAPI, engine: DevnetEngine) -> None:
    subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = set()

    def on_block(block: Block, result: BlockResult) -> None:
        event = {
            "query": "tm.event='NewBlock'",
            "data": {
                "type": "tendermint/event/NewBlock",
                "value": {**block_json(block), "app_hash": result.app_hash.upper()},
            },
        }
        for loop, queue in list(subscribers):
            loop.call_soon_threadsafe(_offer, queue, event)

    engine.add_listener(on_block)

    async def subscribe(ws: WebSocket) -> None:
        if len(subscribers) >= MAX_SUBSCRIBERS:
            await ws.close(code=1013, reason="too many subscribers; retry later")
            return
        await ws.accept()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        entry = (asyncio.get_running_loop(), queue)
        subscribers.add(entry)
        try:
            while True:
                event = await queue.get()
                await ws.send_json({"jsonrpc": "2.0", "id": 0, "result": event})
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            subscribers.discard(entry)

    app.add_api_websocket_route("/subscribe", subscribe)
    app.add_api_websocket_route("/websocket", subscribe)


def _offer(queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    if queue.full():
        queue.get_nowait()  # drop the oldest for a slow subscriber rather than block the chain
    queue.put_nowait(event)
