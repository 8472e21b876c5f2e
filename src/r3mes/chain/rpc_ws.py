"""JSON-RPC over websocket: CometBFT's subscribe / unsubscribe / unsubscribe_all.

A client sends `{"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"query":
"tm.event='NewBlock'"}}` and gets `{"id": 1, "result": {}}`, then one message per matching
event carrying the same id: `{"query", "data": {"type": "tendermint/event/NewBlock" |
"tendermint/event/Tx", "value"}, "events": {"tm.event": [...], ...}}`. A query is
in CometBFT's language (rpc_query), e.g. `tm.event='Tx' AND message.sender='remes1...'` or
`tm.event='NewBlock' AND round_opened.round>=3`, over the event's attributes (`tm.event`,
`tx.hash`, `tx.height` and the events' `type.key`; a NewBlock carries its block's begin/end
events). Other RPC methods may be called over the same socket. `/subscribe` (R3MES's own
path) starts with a NewBlock subscription already open (id 0); `/websocket` with none.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from r3mes.chain import rpc_query
from r3mes.chain.application import APP_VERSION
from r3mes.chain.engine import DevnetEngine
from r3mes.chain.rpc_json import (
    INTERNAL_ERROR,
    RpcError,
    block_json,
    decode_request,
    error_json,
    tx_result_json,
)
from r3mes.chain.rpc_query import Condition
from r3mes.chain.transition import Block, BlockResult
from r3mes.chain.tx import tx_hash

if TYPE_CHECKING:
    from r3mes.chain.rpc import Methods

log = logging.getLogger(__name__)
MAX_SUBSCRIBERS = 64
MAX_QUERIES = 16
MAX_MESSAGE_BYTES = 64 * 1024
NEW_BLOCK = "tm.event='NewBlock'"
EVENT_TYPES = ("NewBlock", "Tx")

Event = tuple[dict[str, list[str]], dict[str, Any]]
"""(attribute map the query matches against, the `data` object sent)."""
Conditions = tuple[Condition, ...]


def parse_query(query: object) -> Conditions:
    """A subscription query in CometBFT's language (rpc_query: =, <, <=, >, >=, CONTAINS,
    EXISTS joined by AND); RpcError (-32603, as CometBFT) if it does not parse. A `tm.event`
    condition, where there is one, must name an event the devnet publishes (NewBlock, Tx)."""
    if isinstance(query, str) and len(query) > 512:
        raise RpcError(200, "query is longer than 512 characters", INTERNAL_ERROR)
    try:
        conditions = rpc_query.parse_query(query)
    except rpc_query.QuerySyntaxError as exc:
        raise RpcError(200, f"failed to parse query: {exc}", INTERNAL_ERROR) from exc
    for c in conditions:
        if c.tag == "tm.event" and c.op == "=" and c.operand not in EVENT_TYPES:
            raise RpcError(
                200,
                f"the devnet publishes tm.event='NewBlock' or tm.event='Tx', not {c.operand!r}",
                INTERNAL_ERROR,
            )
    return conditions


def _holds(c: Condition, value: str) -> bool:
    if c.op == "EXISTS":
        return True
    if c.op == "CONTAINS":
        return isinstance(c.operand, str) and c.operand in value
    if isinstance(c.operand, str):
        return value == c.operand
    try:  # a number: compared with attributes written as numbers, exactly
        number = Decimal(value)
    except InvalidOperation:
        return False
    operand = c.operand if c.operand is not None else 0
    return {
        "=": number == operand,
        "<": number < operand,
        "<=": number <= operand,
        ">": number > operand,
        ">=": number >= operand,
    }[c.op]


def matches(conditions: Conditions, attributes: dict[str, list[str]]) -> bool:
    """Whether every condition holds for some value of its tag (CometBFT's semantics)."""
    return all(any(_holds(c, v) for v in attributes.get(c.tag, ())) for c in conditions)


def block_events(block: Block, result: BlockResult, data_of_block: dict[str, Any]) -> list[Event]:
    """The NewBlock event and one Tx event per transaction of a committed block."""
    height = str(block.header.height)
    block_level = (*result.begin_events, *result.end_events)
    finalize: dict[str, Any] = {
        "tx_results": [tx_result_json(r) for r in result.tx_results],
        "validator_updates": None,
        "app_hash": base64.b64encode(bytes.fromhex(result.app_hash)).decode(),
    }
    if block_level:  # CometBFT leaves out an empty events list
        finalize["events"] = [e.to_json() for e in block_level]
    value = {**data_of_block, "result_finalize_block": finalize}
    new_block: dict[str, list[str]] = {"tm.event": ["NewBlock"]}
    for ev in block_level:  # as CometBFT, the block's events are matched too
        for key, val in ev.attributes:
            new_block.setdefault(f"{ev.type}.{key}", []).append(val)
    events: list[Event] = [
        (new_block, {"type": "tendermint/event/NewBlock", "value": value}),
    ]
    for index, (raw, res) in enumerate(zip(block.txs, result.tx_results, strict=True)):
        attributes: dict[str, list[str]] = {
            "tm.event": ["Tx"],
            "tx.hash": [tx_hash(raw)],
            "tx.height": [height],
        }
        for ev in res.events:
            for key, val in ev.attributes:
                attributes.setdefault(f"{ev.type}.{key}", []).append(val)
        tx_result = {
            "height": height,
            "index": index,
            "tx": base64.b64encode(raw).decode(),
            "result": tx_result_json(res),
        }
        events.append(
            (attributes, {"type": "tendermint/event/Tx", "value": {"TxResult": tx_result}})
        )
    return events


class Session:
    """One websocket connection: its subscriptions (query -> request id) and its sends."""

    def __init__(self, ws: WebSocket, methods: Methods) -> None:
        self.ws = ws
        self.methods = methods
        self.queries: dict[str, tuple[Any, Conditions]] = {}
        self._send_lock = asyncio.Lock()

    async def send(self, doc: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_json(doc)

    async def reply(self, rid: Any, result: Any = None, error: RpcError | None = None) -> None:
        doc: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
        if error is None:
            doc["result"] = result
        else:
            doc["error"] = error_json(error.code, error.message)
        await self.send(doc)

    async def handle(self, text: str) -> None:
        """Answer one client message (a JSON-RPC request)."""
        try:
            if len(text) > MAX_MESSAGE_BYTES:
                raise RpcError(400, f"messages are limited to {MAX_MESSAGE_BYTES} bytes", -32600)
            request = decode_request(text)
        except RpcError as exc:
            await self.reply(None, error=exc)
            return
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            error = RpcError(400, "send a JSON-RPC 2.0 request object with a method", -32600)
            await self.reply(
                None if not isinstance(request, dict) else request.get("id"), error=error
            )
            return
        rid, method, params = request.get("id"), request["method"], request.get("params") or {}
        try:
            if not isinstance(params, dict):
                raise RpcError(200, "params must be a JSON object")
            result = await self._dispatch(rid, method, params)
        except RpcError as exc:
            await self.reply(rid, error=exc)
            return
        await self.reply(rid, result)

    async def _dispatch(self, rid: Any, method: str, params: dict[str, Any]) -> Any:
        if method == "subscribe":
            query = params.get("query")
            conditions = parse_query(query)
            if query in self.queries and query != NEW_BLOCK:
                raise RpcError(200, f"already subscribed to {query}", INTERNAL_ERROR)
            if len(self.queries) >= MAX_QUERIES and query not in self.queries:
                raise RpcError(
                    200, f"at most {MAX_QUERIES} subscriptions per connection", INTERNAL_ERROR
                )
            self.queries[str(query)] = (rid, conditions)
            return {}
        if method == "unsubscribe":
            query = params.get("query")
            if not isinstance(query, str) or query not in self.queries:
                raise RpcError(200, f"not subscribed to {query!r}", INTERNAL_ERROR)
            del self.queries[query]
            return {}
        if method == "unsubscribe_all":
            self.queries.clear()
            return {}
        return await asyncio.to_thread(self.methods.call, method, params)

    async def deliver(self, events: list[Event]) -> None:
        for query, (rid, conditions) in list(self.queries.items()):
            for attributes, data in events:
                if matches(conditions, attributes):
                    result = {"query": query, "data": data, "events": attributes}
                    await self.send({"jsonrpc": "2.0", "id": rid, "result": result})


def install_websocket(app: FastAPI, engine: DevnetEngine, methods: Methods) -> None:
    queues: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[list[Event]]]] = set()

    def on_block(block: Block, result: BlockResult) -> None:
        if not queues:
            return
        data = block_json(
            block,
            identity=methods.identity,
            app_version=APP_VERSION,
            last_results_hash=methods.results_hash_at(block.header.height - 1),
        )
        events = block_events(block, result, data)
        for loop, queue in list(queues):
            loop.call_soon_threadsafe(_offer, queue, events)

    engine.add_listener(on_block)

    def endpoint(implicit_new_block: bool) -> Callable[[WebSocket], Any]:
        async def session(ws: WebSocket) -> None:
            if len(queues) >= MAX_SUBSCRIBERS:
                await ws.close(code=1013, reason="too many subscribers; retry later")
                return
            await ws.accept()
            methods.note_server(ws.scope)
            state = Session(ws, methods)
            if implicit_new_block:
                state.queries[NEW_BLOCK] = (0, parse_query(NEW_BLOCK))
            queue: asyncio.Queue[list[Event]] = asyncio.Queue(maxsize=256)
            entry = (asyncio.get_running_loop(), queue)
            queues.add(entry)
            sender = asyncio.create_task(_pump(queue, state))
            try:
                while True:
                    await state.handle(await ws.receive_text())
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                queues.discard(entry)
                sender.cancel()

        return session

    app.add_api_websocket_route("/subscribe", endpoint(True))
    app.add_api_websocket_route("/websocket", endpoint(False))


async def _pump(queue: asyncio.Queue[list[Event]], session: Session) -> None:
    try:
        while True:
            await session.deliver(await queue.get())
    except (WebSocketDisconnect, RuntimeError):
        pass  # the connection went away; the receive loop ends the session


def _offer(queue: asyncio.Queue[list[Event]], events: list[Event]) -> None:
    if queue.full():
        queue.get_nowait()  # drop the oldest for a slow subscriber rather than block the chain
    queue.put_nowait(events)
