"""REST and JSON-RPC in front of a CometBFT node (`r3mes chain rest --rpc URL`).

CometBFT serves the standard JSON-RPC (`status`, `broadcast_tx_sync`, `block`, `tx`,
`tx_search`, `abci_query`, ...); the ledger's REST routes under `/remes/remes/v1/` exist
only as ABCI queries (`/remes.remes.v1.Query/<Method>`), as in Cosmos, where the gateway
turns REST into gRPC queries. This app does the same over `abci_query`, forwards every
JSON-RPC call to the node, and keeps the conventions `BlockchainClient` reads from the
devnet, so the roles cannot tell which engine they talk to:

- `simulate_tx` (R3MES's own method) is the ABCI query `/app/simulate`;
- `tx` also takes the hash in hex (CometBFT's JSON body wants base64 bytes);
- a tx CometBFT's mempool cache already holds answers code DUPLICATE, as the devnet does;
- CometBFT's JSON-RPC error objects pass unchanged, with HTTP 200 also for a GET (where
  CometBFT says 500, which clients would retry), as the devnet answers them;
- GET /<method> is passed through (CometBFT's URI form);
- `/websocket` is piped to the node's websocket (`subscribe` to NewBlock or Tx events).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from google.protobuf.message import Message

from r3mes import __version__
from r3mes.chain.abci import PATH_PREFIX
from r3mes.chain.abci_server import SIMULATE_PATH
from r3mes.chain.client_types import PREFIX
from r3mes.chain.codes import Code
from r3mes.chain.errors import ChainError
from r3mes.chain.proto.gen.remes.remes.v1 import query_pb2
from r3mes.chain.rpc import rpc_error
from r3mes.chain.tx import MAX_TX_BYTES, tx_hash
from r3mes.chain.views import QueryError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 * MAX_TX_BYTES
MAX_WS_BYTES = 16 * 1024 * 1024


class NodeUnavailable(ChainError):
    """The CometBFT node did not answer."""


@dataclass(frozen=True)
class GatewayConfig:
    rpc_url: str
    """The CometBFT node's RPC, e.g. http://127.0.0.1:26657."""
    timeout_s: float = 10.0
    """Timeout of each call to the node."""

    def __post_init__(self) -> None:
        if not self.rpc_url.startswith(("http://", "https://")):
            raise ChainError(f"--rpc {self.rpc_url!r} must start with http:// or https://")
        if not 0 < self.timeout_s <= 600:
            raise ChainError("timeout_s must be in (0, 600]")


class CometRpc:
    """One JSON-RPC call at a time to the node (httpx.AsyncClient, pooled)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.http = httpx.AsyncClient(base_url=config.rpc_url, timeout=config.timeout_s)
        self._ids = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The node's whole JSON-RPC answer (result or error)."""
        self._ids += 1
        body = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params}
        try:
            response = await self.http.post("/", json=body)
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise NodeUnavailable(f"CometBFT node unreachable for {method}: {exc}") from exc
        if not isinstance(doc, dict):
            raise NodeUnavailable(f"CometBFT node answered {method} with non-JSON-RPC")
        return doc

    async def abci_query(self, path: str, data: bytes) -> tuple[int, bytes, str]:
        """(code, value, log) of one ABCI query on the latest committed state."""
        doc = await self.call("abci_query", {"path": path, "data": data.hex()})
        if "error" in doc:
            raise NodeUnavailable(f"abci_query {path}: {_error_text(doc)}")
        res = doc["result"]["response"]
        value = base64.b64decode(res.get("value") or "")
        return int(res.get("code", 0)), value, str(res.get("log", ""))


def _error_text(doc: dict[str, Any]) -> str:
    err = doc.get("error") or {}
    return f"{err.get('message', '')} {err.get('data', '')}".strip()


async def query_json(rpc: CometRpc, method: str, request: Message) -> dict[str, Any]:
    """The REST document of one ledger query, through abci_query."""
    code, value, text = await rpc.abci_query(PATH_PREFIX + method, request.SerializeToString())
    if code:
        raise QueryError(text, status=404 if code == 404 else 400)
    reply = query_pb2.QueryJsonResponse.FromString(value)
    doc: dict[str, Any] = json.loads(reply.json)
    return doc


RoundArg = Annotated[int | None, Query(ge=1, le=2**63)]


def rest_router(rpc: CometRpc) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["remes"])

    @router.get("/params")
    async def params() -> dict[str, Any]:
        return await query_json(rpc, "Params", query_pb2.QueryParamsRequest())

    @router.get("/rounds/current")
    async def current_round() -> dict[str, Any]:
        return await query_json(rpc, "Round", query_pb2.QueryRoundRequest())

    @router.get("/rounds/{number}")
    async def round_(number: int) -> dict[str, Any]:
        if not 1 <= number < 2**63:
            raise QueryError("round number must be >= 1")
        return await query_json(rpc, "Round", query_pb2.QueryRoundRequest(round=number))

    @router.get("/tasks")
    async def tasks(round: RoundArg = None) -> dict[str, Any]:
        return await query_json(rpc, "Tasks", query_pb2.QueryTasksRequest(round=round or 0))

    @router.get("/submissions")
    async def submissions(round: RoundArg = None) -> dict[str, Any]:
        request = query_pb2.QuerySubmissionsRequest(round=round or 0)
        return await query_json(rpc, "Submissions", request)

    @router.get("/submissions/{sid}")
    async def submission(sid: int) -> dict[str, Any]:
        if not 1 <= sid < 2**63:
            raise QueryError("submission id must be >= 1")
        return await query_json(rpc, "Submission", query_pb2.QuerySubmissionRequest(id=sid))

    @router.get("/proposals/{round_number}")
    async def proposal(round_number: int) -> dict[str, Any]:
        if not 1 <= round_number < 2**63:
            raise QueryError("round number must be >= 1")
        request = query_pb2.QueryProposalRequest(round=round_number)
        return await query_json(rpc, "Proposal", request)

    @router.get("/disputes")
    async def disputes() -> dict[str, Any]:
        return await query_json(rpc, "Disputes", query_pb2.QueryDisputesRequest())

    @router.get("/disputes/{dispute_id}")
    async def dispute(dispute_id: int) -> dict[str, Any]:
        if not 1 <= dispute_id < 2**63:
            raise QueryError("dispute id must be >= 1")
        return await query_json(rpc, "Dispute", query_pb2.QueryDisputeRequest(id=dispute_id))

    @router.get("/stake/{address}")
    async def stake(address: str) -> dict[str, Any]:
        return await query_json(rpc, "Stake", query_pb2.QueryStakeRequest(address=address))

    @router.get("/nodes")
    async def nodes(role: str | None = None) -> dict[str, Any]:
        return await query_json(rpc, "Nodes", query_pb2.QueryNodesRequest(role=role or ""))

    @router.get("/artifacts")
    async def artifacts(kind: str | None = None, status: str | None = None) -> dict[str, Any]:
        request = query_pb2.QueryArtifactsRequest(kind=kind or "", status=status or "")
        return await query_json(rpc, "Artifacts", request)

    @router.get("/leaderboard")
    async def leaderboard(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        request = query_pb2.QueryLeaderboardRequest(limit=limit)
        return await query_json(rpc, "Leaderboard", request)

    @router.get("/accounts/{address}")
    async def account(address: str) -> dict[str, Any]:
        request = query_pb2.QueryAccountRequest(address=address)
        return await query_json(rpc, "Account", request)

    return router


async def _simulate(rpc: CometRpc, params: dict[str, Any]) -> dict[str, Any]:
    try:
        raw = base64.b64decode(str(params.get("tx", "")), validate=True)
    except ValueError as exc:
        raise QueryError(f"tx must be base64: {exc}") from exc
    code, value, text = await rpc.abci_query(SIMULATE_PATH, raw)
    if code:
        raise QueryError(text)
    doc = json.loads(value)
    return {**doc, "codespace": "", "hash": tx_hash(raw)}


def _translate(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The devnet's parameter encodings -> CometBFT's (JSON bodies carry bytes as base64)."""
    if method == "tx" and isinstance(params.get("hash"), str):
        digest = params["hash"].strip('"').removeprefix("0x").removeprefix("0X")
        if len(digest) == 64:  # else CometBFT's own form (base64) passes as it is
            try:
                params = {**params, "hash": base64.b64encode(bytes.fromhex(digest)).decode()}
            except ValueError as exc:
                raise QueryError("hash must be 64 hex characters or base64 of 32 bytes") from exc
    return params


async def jsonrpc_call(rpc: CometRpc, body: dict[str, Any]) -> JSONResponse:
    rid, method = body.get("id", -1), body.get("method")
    params = body.get("params") or {}
    if not isinstance(method, str) or not isinstance(params, dict):
        return rpc_error(400, "a JSON-RPC request needs a method and named params", rid=rid)
    try:
        if method == "simulate_tx":
            result = await _simulate(rpc, params)
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result})
        doc = await rpc.call(method, _translate(method, params))
    except QueryError as exc:
        return rpc_error(200, str(exc), rid=rid)
    except NodeUnavailable as exc:
        return rpc_error(502, str(exc), -32603, rid=rid)
    if "error" not in doc:
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": doc.get("result")})
    text = _error_text(doc)
    if method.startswith("broadcast_tx") and "already exists in cache" in text:
        digest = tx_hash(base64.b64decode(str(params.get("tx", ""))))
        duplicate = {"code": int(Code.DUPLICATE), "data": "", "log": "tx already in mempool"}
        result = {**duplicate, "codespace": "", "hash": digest}
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result})
    return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": doc["error"]})  # as the devnet


def create_gateway(config: GatewayConfig) -> FastAPI:
    """The gateway app over one CometBFT node; the HTTP client lives on app.state."""
    rpc = CometRpc(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await rpc.aclose()

    app = FastAPI(title="R3MES ledger gateway (CometBFT)", version=__version__, lifespan=lifespan)
    app.state.rpc = rpc
    app.include_router(rest_router(rpc))

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"code": exc.status, "message": str(exc)}, status_code=exc.status)

    @app.exception_handler(NodeUnavailable)
    async def unavailable(request: Request, exc: NodeUnavailable) -> JSONResponse:
        return JSONResponse({"code": 502, "message": str(exc)}, status_code=502)

    @app.post("/")
    async def jsonrpc(request: Request) -> JSONResponse:
        data = await request.body()
        if len(data) > MAX_BODY_BYTES:
            return rpc_error(413, f"request body limited to {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(data)
        except ValueError:
            return rpc_error(400, "the request body is not JSON", -32700, rid=None)
        if not isinstance(body, dict):
            return rpc_error(400, "a JSON-RPC request must be a JSON object", -32600, rid=None)
        return await jsonrpc_call(rpc, body)

    @app.get("/{method}")
    async def uri_call(method: str, request: Request) -> JSONResponse:
        """GET /<method>?... as CometBFT serves it (URI parameters passed through)."""
        if method == "simulate_tx":
            params = dict(request.query_params)
            return await jsonrpc_call(rpc, {"id": -1, "method": method, "params": params})
        try:
            response = await rpc.http.get(f"/{method}", params=request.query_params)
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return rpc_error(502, f"CometBFT node unreachable for {method}: {exc}", -32603)
        # CometBFT answers a failed GET with HTTP 500, which clients would retry: the
        # error object goes back with 200, as the devnet answers it
        return JSONResponse(doc)

    @app.websocket("/websocket")
    async def websocket(ws: WebSocket) -> None:
        """CometBFT's websocket (subscribe NewBlock / Tx), piped both ways."""
        await pipe_websocket(ws, config.rpc_url.replace("http", "ws", 1) + "/websocket")

    return app


async def pipe_websocket(ws: WebSocket, upstream_url: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    await ws.accept()
    try:
        async with connect(upstream_url, open_timeout=10, max_size=MAX_WS_BYTES) as upstream:

            async def down() -> None:
                async for message in upstream:
                    await ws.send_text(message if isinstance(message, str) else message.decode())

            async def up() -> None:
                while True:
                    await upstream.send(await ws.receive_text())

            tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
    except (OSError, WebSocketException, WebSocketDisconnect) as exc:
        log.info("websocket pipe closed: %s", exc)
    finally:
        with contextlib.suppress(RuntimeError):
            await ws.close()


def serve_gateway(config: GatewayConfig, *, host: str, port: int) -> None:
    """Serve the gateway until SIGTERM or SIGINT, then exit normally (status 0)."""
    import uvicorn

    class _Server(uvicorn.Server):
        # uvicorn re-raises the stopping signal after a graceful shutdown (exit 143);
        # a stop asked for is a clean exit here, as for the devnet and the backend.
        def handle_exit(self, sig: int, frame: object) -> None:
            self.force_exit = self.should_exit
            self.should_exit = True

    app = create_gateway(config)
    uvicorn_config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    _Server(uvicorn_config).run()
