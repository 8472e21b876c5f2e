"""CometBFT-shaped JSON-RPC over HTTP (and websocket, see rpc_ws.py) and the REST router.

Every method answers through one dispatcher, whichever way it is called: GET /<method>
with URI parameters, POST / with a JSON-RPC 2.0 body (the request id is echoed, errors
included), or a JSON-RPC message on the websocket. Answers look like a CometBFT node's
(`{"jsonrpc": "2.0", "id": ..., "result": ...}`), so tools written for CometBFT read them.
Invalid input answers 400 and unknown objects 404 (clients must not retry those).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from r3mes import __version__
from r3mes.chain import abci
from r3mes.chain.application import APP_VERSION
from r3mes.chain.engine import DevnetEngine
from r3mes.chain.identity import NodeIdentity
from r3mes.chain.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from r3mes.chain.rest import rest_router
from r3mes.chain.rpc_json import (
    RpcError,
    block_json,
    commit_json,
    decode_request,
    header_json,
    height_param,
    number_param,
    parse_bytes,
    results_hash,
    rfc3339,
    stored_tx_json,
    validators_json,
)
from r3mes.chain.rpc_ws import install_websocket
from r3mes.chain.tx import MAX_TX_BYTES
from r3mes.chain.views import QueryError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 * MAX_TX_BYTES
MAX_COMMIT_WAIT_S = 30.0
METHODS = (
    "status",
    "genesis",
    "block",
    "block_results",
    "broadcast_tx_sync",
    "broadcast_tx_commit",
    "simulate_tx",
    "tx",
    "tx_search",
    "abci_query",
    "abci_info",
    "health",
    "validators",
    "net_info",
    "num_unconfirmed_txs",
    "commit",
    "blockchain",
)
MAX_BLOCK_METAS = 20
"""Block metas per `blockchain` answer (CometBFT's limit)."""
COMETBFT_VERSION = "0.38.26"
"""The CometBFT release whose RPC the devnet answers like (status reports it)."""


def _height(engine: DevnetEngine, height: str | int | None) -> int:
    latest = engine.state.height
    if height in (None, "", 0, "0"):
        return latest
    value = height_param(str(height), "height")
    if not 1 <= value <= latest:
        raise RpcError(404, f"height {value} is not available (latest is {latest})")
    return value


class Methods:
    """The JSON-RPC methods; `call` is the one entry point all transports use."""

    def __init__(self, engine: DevnetEngine, identity: NodeIdentity) -> None:
        self.engine = engine
        self.identity = identity

    def call(self, name: str, params: object) -> Any:
        """Run method `name` with `params` (a JSON object of strings or scalars)."""
        if name not in METHODS:
            raise RpcError(404, f"unknown method {name!r}; methods: {', '.join(METHODS)}", -32601)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(400, f"params of {name} must be a JSON object")
        func: Callable[..., Any] = getattr(self, name)
        accepted = inspect.signature(func).parameters
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise RpcError(
                400, f"{name} takes no parameter {unknown[0]!r}; it takes {list(accepted)}"
            )
        missing = [
            p
            for p, spec in accepted.items()
            if spec.default is inspect.Parameter.empty and params.get(p) is None
        ]
        if missing:
            raise RpcError(400, f"{name} needs the parameter {missing[0]!r}")
        args = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in params.items()
            if v is not None
        }
        return func(**args)

    def status(self) -> dict[str, Any]:
        state, app_hash = self.engine.snapshot()
        found = self.engine.store.block(state.height) if state.height else None
        first = self.engine.store.block(1) if state.height else None
        return {
            "node_info": {
                "protocol_version": {"p2p": "8", "block": "11", "app": str(APP_VERSION)},
                "id": self.identity.node_id,
                "listen_addr": "",
                "network": state.chain_id,
                "version": COMETBFT_VERSION,
                "channels": "",
                "moniker": "r3mes-devnet",
                "other": {"tx_index": "on", "rpc_address": "", "r3mes_version": __version__},
            },
            "sync_info": {
                "latest_block_hash": found[0].hash.upper() if found else "",
                "latest_app_hash": app_hash.upper(),
                "latest_block_height": str(state.height),
                "latest_block_time": rfc3339(state.last_block_time_ms),
                "earliest_block_hash": first[0].hash.upper() if first else "",
                "earliest_app_hash": first[0].header.app_hash.upper() if first else "",
                "earliest_block_height": "1" if first else "0",
                "earliest_block_time": rfc3339(first[0].header.time_ms) if first else "",
                "catching_up": False,
            },
            "validator_info": {
                "address": self.identity.validator_address,
                "pub_key": self.identity.pub_key_json(),
                "voting_power": "1",
            },
            "mempool_size": self.engine.mempool_size(),
        }

    def genesis(self) -> dict[str, Any]:
        """The genesis document (CometBFT's `genesis`): what indexers start from."""
        doc: dict[str, Any] = json.loads(self.engine.store.genesis().to_json())
        return {"genesis": doc}

    def block(self, height: str | None = None) -> dict[str, Any]:
        found = self.engine.store.block(_height(self.engine, height))
        if found is None:
            raise RpcError(404, "no block at that height yet")
        return block_json(
            found[0],
            identity=self.identity,
            app_version=APP_VERSION,
            last_results_hash=self.results_hash_at(found[0].header.height - 1),
        )

    def results_hash_at(self, height: int) -> str:
        """`results_hash` of block `height`'s tx results (EMPTY_HASH before block 1)."""
        results = self.engine.store.block_results(height) if height >= 1 else None
        return results_hash([int(r["code"]) for r in results["txs_results"]] if results else [])

    def commit(self, height: str | None = None) -> dict[str, Any]:
        """Block `height`'s header and commit. As on CometBFT, the commit carried by the next
        block is canonical; the latest block's (not yet carried) is not."""
        h = _height(self.engine, height)
        found = self.engine.store.block(h)
        if found is None:
            raise RpcError(404, "no block at that height yet")
        block, following = found[0], self.engine.store.block(h + 1)
        commit = commit_json(
            chain_id=block.header.chain_id,
            height=h,
            block_hash=block.hash,
            time_ms=following[0].header.time_ms if following else block.header.time_ms,
            identity=self.identity,
        )
        header = header_json(
            block.header,
            identity=self.identity,
            app_version=APP_VERSION,
            last_results_hash=self.results_hash_at(h - 1),
        )
        return {
            "signed_header": {"header": header, "commit": commit},
            "canonical": following is not None,
        }

    def blockchain(self, minHeight: str = "0", maxHeight: str = "0") -> dict[str, Any]:
        """Headers of blocks [minHeight, maxHeight], newest first, at most 20 (CometBFT's
        limits and defaults: maxHeight 0 is the latest, minHeight 0 is 19 below it)."""
        latest = self.engine.state.height
        top = min(
            int(number_param(maxHeight, "maxHeight", low=0, high=2**63 - 1)) or latest, latest
        )
        low = int(number_param(minHeight, "minHeight", low=0, high=2**63 - 1))
        bottom = max(low or 1, top - MAX_BLOCK_METAS + 1, 1)
        if low > top:
            raise RpcError(400, f"minHeight {low} is above maxHeight {top}")
        metas = []
        for h in range(top, bottom - 1, -1):
            found = self.engine.store.block(h)
            if found is None:
                continue
            doc = self.block(str(h))
            metas.append(
                {
                    "block_id": doc["block_id"],
                    "block_size": str(len(json.dumps(doc["block"], separators=(",", ":")))),
                    "header": doc["block"]["header"],
                    "num_txs": str(len(found[0].txs)),
                }
            )
        return {"last_height": str(latest), "block_metas": metas}

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

    def broadcast_tx_commit(self, tx: str, timeout: str = "10") -> dict[str, Any]:
        wait = number_param(timeout, "timeout", low=0, high=MAX_COMMIT_WAIT_S)
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
        stored = self.engine.wait_for_tx(check.hash, timeout_s=wait)
        if stored is None:
            raise RpcError(503, f"tx {check.hash} not committed within {wait:g} s", code=-32603)
        return {
            **out,
            "tx_result": stored_tx_json(stored)["tx_result"],
            "height": str(stored.height),
        }

    def simulate_tx(self, tx: str) -> dict[str, Any]:
        """R3MES's own method: the result the tx would have in the next block, nothing sent."""
        result = self.engine.simulate(parse_bytes(tx, "tx"))
        return {
            "code": result.code,
            "log": result.log,
            "codespace": "",
            "hash": result.hash,
            "events": [e.to_json() for e in result.events],
        }

    def tx(self, hash: str, prove: str = "false") -> dict[str, Any]:
        """A committed tx by hash: 64 hex characters (0x optional) or, as CometBFT's JSON
        body carries bytes, base64 of the 32 bytes. The devnet keeps no Merkle proofs of
        its txs, so prove=true is refused."""
        if prove.strip('"').lower() not in ("false", "0", ""):
            raise RpcError(400, "the devnet keeps no tx proofs; call tx with prove=false")
        digest = hash.strip('"').removeprefix("0x").removeprefix("0X").upper()
        if len(digest) != 64:
            try:
                raw = base64.b64decode(hash.strip('"'), validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise RpcError(400, "hash must be 64 hex characters or base64 of 32 bytes")
            digest = raw.hex().upper()
        found = self.engine.store.tx(digest)
        if found is None:
            raise RpcError(404, f"tx {digest} not found")
        return stored_tx_json(found)

    def tx_search(
        self, query: str, page: str = "1", per_page: str = "30", order_by: str = "asc"
    ) -> dict[str, Any]:
        """Matching txs, one page at a time; total_count counts every match."""
        height, signer = parse_tx_query(query)
        size = int(number_param(per_page, "per_page", low=1, high=100))
        number = int(number_param(page, "page", low=1, high=2**31))
        order = order_by.strip('"') or "asc"
        if order not in ("asc", "desc"):
            raise RpcError(400, "order_by must be asc or desc")
        found, total = self.engine.store.tx_search(
            height=height,
            signer=signer,
            limit=size,
            offset=(number - 1) * size,
            descending=order == "desc",
        )
        return {"txs": [stored_tx_json(t) for t in found], "total_count": str(total)}

    def abci_query(self, path: str, data: str = "", height: str | None = None) -> dict[str, Any]:
        raw = parse_bytes(data, "data", limit=4096) if data else b""
        state = self.engine.state
        try:
            value = abci.query(state, path.strip('"'), raw)
        except QueryError as exc:
            response = {"code": 1, "log": str(exc), "value": "", "height": str(state.height)}
            return {"response": response}
        encoded = base64.b64encode(value).decode()
        return {"response": {"code": 0, "log": "", "value": encoded, "height": str(state.height)}}

    def abci_info(self) -> dict[str, Any]:
        info = self.engine.app.info()
        app_hash = bytes.fromhex(info.last_block_app_hash)
        response = {
            "data": "r3mes-ledger",
            "version": "r3mes-ledger",
            "app_version": str(info.app_version),
            "last_block_height": str(info.last_block_height),
            "last_block_app_hash": base64.b64encode(app_hash).decode(),
        }
        return {"response": response}

    def health(self) -> dict[str, Any]:
        return {}

    def validators(
        self, height: str | None = None, page: str = "1", per_page: str = "30"
    ) -> dict[str, Any]:
        """The one devnet validator (the node's identity), at any committed height."""
        h = _height(self.engine, height)
        validators = validators_json(self.identity)
        return {"block_height": str(h), "validators": validators, "count": "1", "total": "1"}

    def net_info(self) -> dict[str, Any]:
        """The devnet has no peers: it is its own and only validator."""
        return {"listening": False, "listeners": [], "n_peers": "0", "peers": []}

    def num_unconfirmed_txs(self) -> dict[str, Any]:
        size = self.engine.mempool_size()
        total_bytes = self.engine.mempool_bytes()
        return {
            "n_txs": str(size),
            "total": str(size),
            "total_bytes": str(total_bytes),
            "txs": None,
        }


def parse_tx_query(query: str) -> tuple[int | None, str | None]:
    """Subset of CometBFT queries: tx.height=N, message.sender='addr', joined by AND."""
    height: int | None = None
    signer: str | None = None
    for clause in query.strip('"').split(" AND "):
        key, _, value = clause.partition("=")
        key, value = key.strip(), value.strip().strip("'")
        if key == "tx.height" and value:
            height = height_param(value, "tx.height")
        elif key == "message.sender" and value:
            signer = value
        else:
            raise RpcError(400, "supported queries: tx.height=N and/or message.sender='addr'")
    return height, signer


def create_app(engine: DevnetEngine, identity: NodeIdentity) -> FastAPI:
    """The node's HTTP app; nothing global, the engine is held on app.state."""
    app = FastAPI(title="R3MES ledger RPC", version=__version__)
    app.state.engine = engine
    methods = Methods(engine, identity)
    app.include_router(rest_router())
    _install_errors(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return rpc_error(413, f"request body limited to {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    for name in METHODS:
        _route(app, methods, name)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text format: height, block times, txs, mempool, commit latency."""
        return Response(engine.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/")
    async def jsonrpc(request: Request) -> JSONResponse:
        data = bytearray()
        async for chunk in request.stream():
            data.extend(chunk)
            if len(data) > MAX_BODY_BYTES:
                return rpc_error(413, f"request body limited to {MAX_BODY_BYTES} bytes")
        try:
            body = decode_request(data)
        except RpcError as exc:
            return rpc_error(exc.status, exc.message, exc.code, rid=None)
        if not isinstance(body, dict):
            return rpc_error(400, "a JSON-RPC request must be a JSON object", -32600, rid=None)
        rid = body.get("id", -1)
        name = body.get("method")
        if not isinstance(name, str):
            return rpc_error(400, "the request names no method", -32600, rid=rid)
        try:
            result = await asyncio.to_thread(methods.call, name, body.get("params"))
        except RpcError as exc:
            return rpc_error(exc.status, exc.message, exc.code, rid=rid)
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result})

    install_websocket(app, engine, methods)
    return app


def _route(app: FastAPI, methods: Methods, name: str) -> None:
    async def handler(request: Request) -> JSONResponse:
        params = dict(request.query_params)
        result = await asyncio.to_thread(methods.call, name, params)
        return JSONResponse({"jsonrpc": "2.0", "id": -1, "result": result})

    app.add_api_route(f"/{name}", handler, methods=["GET"], name=name)


def rpc_error(status: int, message: str, code: int = -32602, *, rid: Any = -1) -> JSONResponse:
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "error": {"code": code, "message": message, "data": message},
    }
    return JSONResponse(body, status_code=status)


def validation_message(exc: RequestValidationError) -> str:
    """'round: Input should be greater than or equal to 1' from pydantic's error list."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RpcError)
    async def rpc_failed(request: Request, exc: RpcError) -> JSONResponse:
        return rpc_error(exc.status, exc.message, exc.code)

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"code": exc.status, "message": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"code": 400, "message": validation_message(exc)}, status_code=400)
