"""CometBFT-shaped JSON-RPC over HTTP (and websocket, see rpc_ws.py) and the REST router.

Every method answers through one dispatcher, whichever way it is called: GET /<method>
with URI parameters, POST / with a JSON-RPC 2.0 body (one request or a batch; named or
positional params; the request id is echoed, errors included), or a JSON-RPC message on
the websocket. Answers are a CometBFT v0.38 node's, field for field
(`{"jsonrpc": "2.0", "id": ..., "result": ...}`), so tools written for CometBFT read them.

Errors are CometBFT's error objects, answered with HTTP 200 as CometBFT answers a POST:
`{"code": -32602, "message": "Invalid params", "data": <what is wrong>}` for a parameter
that does not parse, -32603 "Internal error" for a method that failed (tx not found, height
not yet reached, a bad query), -32601 "Method not found". Two deliberate differences: a GET
that fails is also HTTP 200 (CometBFT says 500, which HTTP clients retry), and a body that
is not JSON (or nests too deep) is HTTP 400 (CometBFT: 500), a body too large 413.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
from collections.abc import Callable, Mapping
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
    CODESPACE,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_HEIGHT,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RpcError,
    block_json,
    commit_json,
    decode_request,
    error_json,
    exec_result_json,
    header_json,
    height_param,
    number_param,
    parse_bytes,
    results_hash,
    rfc3339,
    stored_tx_json,
    tx_proof_json,
    validators_json,
)
from r3mes.chain.rpc_query import Condition, QuerySyntaxError, parse_query
from r3mes.chain.rpc_ws import install_websocket
from r3mes.chain.store import StoredTx
from r3mes.chain.tx import MAX_TX_BYTES
from r3mes.chain.views import QueryError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 * MAX_TX_BYTES
MAX_COMMIT_WAIT_S = 30.0
MAX_BATCH = 64
"""Requests per JSON-RPC batch."""
METHODS = (
    "status",
    "genesis",
    "block",
    "block_by_hash",
    "header",
    "header_by_hash",
    "block_results",
    "broadcast_tx_sync",
    "broadcast_tx_async",
    "broadcast_tx_commit",
    "check_tx",
    "simulate_tx",
    "tx",
    "tx_search",
    "block_search",
    "abci_query",
    "abci_info",
    "health",
    "validators",
    "net_info",
    "num_unconfirmed_txs",
    "unconfirmed_txs",
    "consensus_params",
    "genesis_chunked",
    "commit",
    "blockchain",
)
MAX_BLOCK_METAS = 20
"""Block metas per `blockchain` answer (CometBFT's limit)."""
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
"""`per_page` of tx_search / block_search / validators: CometBFT's default and cap."""
COMETBFT_VERSION = "0.38.26"
"""The CometBFT release whose RPC the devnet answers like (status reports it)."""


def failed(detail: str) -> RpcError:
    """A method's failure (CometBFT's -32603 "Internal error" with the detail as data)."""
    return RpcError(200, detail, INTERNAL_ERROR)


def _height(engine: DevnetEngine, height: str | int | None) -> int:
    """A committed height; absent means the latest (CometBFT's texts for the others)."""
    latest = engine.state.height
    if height is None or height == "":
        return latest
    text = str(height).strip().strip('"')
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        raise failed(f"height must be greater than 0, but got {text}")
    value = height_param(text, "height")
    if value == 0:
        raise failed("height must be greater than 0, but got 0")
    if value > latest:
        raise failed(
            f"height {value} must be less than or equal to the current blockchain height {latest}"
        )
    return value


def _page(page: str, per_page: str) -> tuple[int, int, int]:
    """(limit, offset, page) of a search page: per_page below 1 is the default 30, above
    100 is 100, as CometBFT; an offset beyond int64 is 0 (`_check_page` refuses it)."""
    size = _int_param(per_page, "per_page")
    size = DEFAULT_PER_PAGE if size < 1 else min(size, MAX_PER_PAGE)
    number = _int_param(page, "page")
    offset = (number - 1) * size
    return size, offset if 0 <= offset <= MAX_HEIGHT else 0, number


def _int_param(value: str, name: str) -> int:
    """A signed 64-bit integer parameter in ASCII digits (CometBFT's int)."""
    text = value.strip().strip('"')
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise RpcError(200, f"{name} must be an integer, not {value[:40]!r}")
    number = int(text)
    if not -(2**63) <= number <= MAX_HEIGHT:
        raise RpcError(200, f"{name} must be a 64-bit integer, not {value[:40]!r}")
    return number


def _check_page(number: int, size: int, total: int) -> None:
    """CometBFT's rule, once the matches are counted: page within [1, pages]."""
    pages = max(1, -(-total // size))
    if not 1 <= number <= pages:
        raise failed(f"page should be within [1, {pages}] range, given {number}")


def _order(order_by: str, default: str) -> bool:
    """Whether `order_by` (asc, desc or empty for `default`) is descending."""
    order = order_by.strip().strip('"') or default
    if order not in ("asc", "desc"):
        raise failed("expected order_by to be either `asc` or `desc` or empty")
    return order == "desc"


def _flag(value: str, name: str) -> bool:
    text = value.strip().strip('"').lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0", ""):
        return False
    raise RpcError(200, f"{name} must be true or false, not {value[:20]!r}")


def search_conditions(query: str, height_tag: str) -> tuple[Condition, ...]:
    """A tx_search / block_search query, parsed and checked against what R3MES indexes:
    `height_tag` (tx.height or block.height) compares integers within int64, tx.hash
    only =, and numbers compared with event attributes are integers."""
    try:
        conditions = parse_query(query)
    except QuerySyntaxError as exc:
        raise failed(str(exc)) from exc
    for c in conditions:
        if c.op == "EXISTS":
            continue
        if c.tag == height_tag or (c.tag == "tx.hash" and height_tag == "tx.height"):
            want_int = c.tag == height_tag
            if want_int and not (
                isinstance(c.operand, int) and -MAX_HEIGHT <= c.operand <= MAX_HEIGHT
            ):
                raise failed(f"{c.tag} must be compared with an integer within int64")
            if not want_int and (c.op != "=" or not isinstance(c.operand, str)):
                raise failed("tx.hash takes = 'HEX' only")
        elif not isinstance(c.operand, str) and not (
            isinstance(c.operand, int) and abs(c.operand) <= MAX_HEIGHT
        ):
            raise failed(f"{c.tag}: R3MES event attributes compare with integers within int64")
    return conditions


class Methods:
    """The JSON-RPC methods; `call` is the one entry point all transports use."""

    def __init__(self, engine: DevnetEngine, identity: NodeIdentity) -> None:
        self.engine = engine
        self.identity = identity
        self.listen_addr = ""
        """host:port the RPC server accepted a request on (its only listener: the devnet
        has no peer-to-peer one), learnt from the first request; status reports it."""

    def note_server(self, scope: Mapping[str, Any]) -> None:
        """Learn the listening address from an ASGI scope (HTTP or websocket)."""
        server = scope.get("server")
        if not self.listen_addr and server and len(server) == 2:
            self.listen_addr = f"{server[0]}:{server[1]}"

    def call(self, name: str, params: object) -> Any:
        """Run method `name` with `params`: a JSON object (named) or array (positional)
        of strings or scalars. Unknown named parameters are ignored, as CometBFT does."""
        if name not in METHODS:
            raise RpcError(200, f"unknown method {name!r}", METHOD_NOT_FOUND)
        func: Callable[..., Any] = getattr(self, name)
        accepted = inspect.signature(func).parameters
        if params is None:
            params = {}
        if isinstance(params, list):
            if len(params) > len(accepted):
                raise RpcError(200, f"{name} takes at most {len(accepted)} parameters")
            params = dict(zip(accepted, params, strict=False))
        if not isinstance(params, dict):
            raise RpcError(200, f"params of {name} must be a JSON object or array")
        missing = [
            p
            for p, spec in accepted.items()
            if spec.default is inspect.Parameter.empty and params.get(p) is None
        ]
        if missing:
            raise RpcError(200, f"{name} needs the parameter {missing[0]!r}")
        args = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in params.items()
            if v is not None and k in accepted
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
                "listen_addr": self.listen_addr,
                "network": state.chain_id,
                "version": COMETBFT_VERSION,
                "channels": "",
                "moniker": f"r3mes-devnet-{__version__}",
                "other": {
                    "tx_index": "on",
                    "rpc_address": f"tcp://{self.listen_addr}" if self.listen_addr else "",
                },
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
        }

    def genesis(self) -> dict[str, Any]:
        """CometBFT's genesis document, the R3MES genesis as its `app_state` (as in the
        genesis.json `r3mes chain testnet` writes); the devnet's one validator, power 1."""
        genesis = self.engine.store.genesis()
        validator = validators_json(self.identity)[0]
        doc = {
            "genesis_time": rfc3339(genesis.genesis_time_ms),
            "chain_id": genesis.chain_id,
            "initial_height": "1",
            "consensus_params": self._consensus_params(),
            "validators": [
                {
                    "address": validator["address"],
                    "pub_key": validator["pub_key"],
                    "power": validator["voting_power"],
                    "name": "r3mes-devnet",
                }
            ],
            "app_hash": "",
            "app_state": json.loads(genesis.to_json()),
        }
        return {"genesis": doc}

    def _consensus_params(self) -> dict[str, Any]:
        """CometBFT's consensus parameters with the devnet's block size limit (the
        evidence ones are CometBFT's defaults: the devnet has no evidence)."""
        return {
            "block": {"max_bytes": str(self.engine.config.max_block_bytes), "max_gas": "-1"},
            "evidence": {
                "max_age_num_blocks": "100000",
                "max_age_duration": "172800000000000",
                "max_bytes": "1048576",
            },
            "validator": {"pub_key_types": ["ed25519"]},
            "version": {"app": str(APP_VERSION)},
            "abci": {"vote_extensions_enable_height": "0"},
        }

    def consensus_params(self, height: str | None = None) -> dict[str, Any]:
        """The same at every height: the devnet's limits never change."""
        h = _height(self.engine, height)
        return {"block_height": str(h), "consensus_params": self._consensus_params()}

    def genesis_chunked(self, chunk: str = "0") -> dict[str, Any]:
        """The genesis document as base64 of its JSON, in one chunk (it is small)."""
        number = _int_param(chunk, "chunk")
        if number != 0:
            raise failed(f"there is 1 chunk (0); {number} is invalid")
        doc = json.dumps(self.genesis()["genesis"], separators=(",", ":")).encode()
        return {"chunk": "0", "total": "1", "data": base64.b64encode(doc).decode()}

    def header(self, height: str | None = None) -> dict[str, Any]:
        return {"header": self.block(height)["block"]["header"]}

    def header_by_hash(self, hash: str) -> dict[str, Any]:
        """The header of the block with this hash; null when there is none, as CometBFT."""
        height = self.engine.store.block_height(_hash_param(hash))
        return {"header": None if height is None else self.header(str(height))["header"]}

    def block_by_hash(self, hash: str) -> dict[str, Any]:
        """The block with this hash; an empty block_id and null when there is none."""
        height = self.engine.store.block_height(_hash_param(hash))
        if height is None:
            return {"block_id": {"hash": "", "parts": {"total": 0, "hash": ""}}, "block": None}
        return self.block(str(height))

    def block(self, height: str | None = None) -> dict[str, Any]:
        found = self.engine.store.block(_height(self.engine, height))
        if found is None:
            raise failed("no block at that height yet")
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
            raise failed("no block at that height yet")
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
            raise failed(f"min height {low} can't be greater than max height {top}")
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
        """CometBFT's FinalizeBlock results; begin and end events are its
        finalize_block_events, and empty lists are null, as CometBFT writes them."""
        h = _height(self.engine, height)
        results = self.engine.store.block_results(h)
        if results is None:
            raise failed(f"could not find results for height #{h}")
        txs = [exec_result_json(r["code"], r["log"], r["events"]) for r in results["txs_results"]]
        events = results["begin_events"] + results["end_events"]
        return {
            "height": str(h),
            "txs_results": txs or None,
            "finalize_block_events": events or None,
            "validator_updates": None,
            "consensus_param_updates": None,
            "app_hash": base64.b64encode(bytes.fromhex(results["app_hash"])).decode(),
        }

    def broadcast_tx_sync(self, tx: str) -> dict[str, Any]:
        result = self.engine.submit(parse_bytes(tx, "tx"))
        return {
            "code": result.code,
            "data": "",
            "log": result.log,
            "codespace": CODESPACE,
            "hash": result.hash,
        }

    def broadcast_tx_async(self, tx: str) -> dict[str, Any]:
        """As broadcast_tx_sync: the devnet's admission is in-process and immediate, so
        the answer carries CheckTx's code (CometBFT's async answers before CheckTx, 0)."""
        return self.broadcast_tx_sync(tx)

    def broadcast_tx_commit(self, tx: str, timeout: str = "10") -> dict[str, Any]:
        wait = number_param(timeout, "timeout", low=0, high=MAX_COMMIT_WAIT_S)
        check = self.engine.submit(parse_bytes(tx, "tx"))
        out: dict[str, Any] = {"check_tx": exec_result_json(check.code, check.log, [])}
        if check.code != 0:
            return {
                **out,
                "tx_result": exec_result_json(0, "", []),
                "hash": check.hash,
                "height": "0",
            }
        stored = self.engine.wait_for_tx(check.hash, timeout_s=wait)
        if stored is None:
            raise failed(f"timed out waiting for tx {check.hash} to be included in a block")
        return {
            **out,
            "tx_result": stored_tx_json(stored)["tx_result"],
            "hash": check.hash,
            "height": str(stored.height),
        }

    def check_tx(self, tx: str) -> dict[str, Any]:
        """CheckTx's answer for `tx`, which is not queued (CometBFT's check_tx)."""
        result = self.engine.check(parse_bytes(tx, "tx"))
        return exec_result_json(result.code, result.log, [])

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
        body carries bytes, base64 of the 32 bytes. prove=true adds the tx's proof
        against its block's data_hash (rpc_json.tx_proof_json)."""
        with_proof = _flag(prove, "prove")
        digest = _hash_param(hash)
        found = self.engine.store.tx(digest)
        if found is None:
            raise failed(f"tx ({digest}) not found")
        return self._tx_json(found, with_proof)

    def _tx_json(self, found: StoredTx, with_proof: bool) -> dict[str, Any]:
        if not with_proof:
            return stored_tx_json(found)
        block = self.engine.store.block(found.height)
        if block is None:
            raise failed(f"block {found.height} of tx {found.hash} is missing")
        proof = tx_proof_json(block[0].txs, found.index, block[0].header.data_hash)
        return stored_tx_json(found, proof)

    def tx_search(
        self,
        query: str,
        prove: str = "false",
        page: str = "1",
        per_page: str = "30",
        order_by: str = "",
    ) -> dict[str, Any]:
        """Txs matching a CometBFT query (rpc_query: tx.height, tx.hash and event
        attributes), one page at a time, oldest first unless order_by=desc; total_count
        counts every match."""
        conditions = search_conditions(query, "tx.height")
        with_proof = _flag(prove, "prove")
        descending = _order(order_by, "asc")
        size, offset, number = _page(page, per_page)
        found, total = self.engine.store.search_txs(
            conditions, limit=size, offset=offset, descending=descending
        )
        _check_page(number, size, total)
        return {"txs": [self._tx_json(t, with_proof) for t in found], "total_count": str(total)}

    def block_search(
        self, query: str, page: str = "1", per_page: str = "30", order_by: str = ""
    ) -> dict[str, Any]:
        """Blocks matching a CometBFT query (block.height and the attributes of the
        blocks' begin/end events), newest first unless order_by=asc, as CometBFT."""
        conditions = search_conditions(query, "block.height")
        descending = _order(order_by, "desc")
        size, offset, number = _page(page, per_page)
        heights, total = self.engine.store.search_blocks(
            conditions, limit=size, offset=offset, descending=descending
        )
        _check_page(number, size, total)
        return {"blocks": [self.block(str(h)) for h in heights], "total_count": str(total)}

    def abci_query(
        self, path: str, data: str = "", height: str = "0", prove: str = "false"
    ) -> dict[str, Any]:
        """An ABCI query on the latest state. `data` is hex (0x optional), as CometBFT's
        HexBytes; height 0 is the latest (the devnet keeps no past states), prove is
        accepted and answers no proof (proofOps null, as an app without proofs)."""
        raw = parse_hex(data, "data", limit=4096)
        _flag(prove, "prove")
        wanted = int(number_param(height, "height", low=0, high=MAX_HEIGHT))
        state = self.engine.state
        if wanted not in (0, state.height):
            raise failed(f"the devnet answers queries on its latest state ({state.height}) only")
        response: dict[str, Any] = {
            "code": 0,
            "log": "",
            "info": "",
            "index": "0",
            "key": None,
            "value": None,
            "proofOps": None,
            "height": str(state.height),
            "codespace": CODESPACE,
        }
        try:
            value = abci.query(state, path.strip('"'), raw)
        except QueryError as exc:
            return {"response": {**response, "code": exc.status, "log": str(exc)}}
        return {"response": {**response, "value": base64.b64encode(value).decode()}}

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
        size, _, number = _page(page, per_page)
        _check_page(number, size, len(validators))
        return {"block_height": str(h), "validators": validators, "count": "1", "total": "1"}

    def net_info(self) -> dict[str, Any]:
        """The devnet has no peers: it is its own and only validator."""
        return {"listening": False, "listeners": [], "n_peers": "0", "peers": []}

    def unconfirmed_txs(self, limit: str = "30") -> dict[str, Any]:
        """Up to `limit` queued txs (CometBFT's per-page rules: below 1 is 30, at most
        100); n_txs counts those listed, total all queued."""
        wanted = _int_param(limit, "limit")
        wanted = DEFAULT_PER_PAGE if wanted < 1 else min(wanted, MAX_PER_PAGE)
        txs = self.engine.unconfirmed(wanted)
        return {
            "n_txs": str(len(txs)),
            "total": str(self.engine.mempool_size()),
            "total_bytes": str(self.engine.mempool_bytes()),
            "txs": [base64.b64encode(raw).decode() for raw in txs],
        }

    def num_unconfirmed_txs(self) -> dict[str, Any]:
        size = self.engine.mempool_size()
        total_bytes = self.engine.mempool_bytes()
        return {
            "n_txs": str(size),
            "total": str(size),
            "total_bytes": str(total_bytes),
            "txs": None,
        }


def _hash_param(value: str) -> str:
    """A 32-byte hash as upper-case hex, from 64 hex characters (0x optional) or, as
    CometBFT's JSON body carries bytes, base64."""
    digest = value.strip('"').removeprefix("0x").removeprefix("0X").upper()
    if len(digest) == 64 and all(c in "0123456789ABCDEF" for c in digest):
        return digest
    try:
        raw = base64.b64decode(value.strip('"'), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise RpcError(200, "hash must be 64 hex characters or base64 of 32 bytes")
    return raw.hex().upper()


def parse_hex(value: str, what: str, limit: int) -> bytes:
    """CometBFT's HexBytes parameter: hex (0x optional; the URI form may quote it)."""
    text = value.strip().strip('"').removeprefix("0x").removeprefix("0X")
    if len(text) > 2 * limit:
        raise RpcError(200, f"{what} is larger than {limit} bytes")
    try:
        return bytes.fromhex(text)
    except (ValueError, binascii.Error) as exc:
        raise RpcError(200, f"{what} must be hex") from exc


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
    async def jsonrpc(request: Request) -> Response:
        methods.note_server(request.scope)
        data = bytearray()
        async for chunk in request.stream():
            data.extend(chunk)
            if len(data) > MAX_BODY_BYTES:
                return rpc_error(413, f"request body limited to {MAX_BODY_BYTES} bytes")
        try:
            body = decode_request(data)
        except RpcError as exc:
            return rpc_error(exc.status, exc.message, exc.code, rid=None)
        if isinstance(body, dict):
            body = [body]
            single = True
        elif isinstance(body, list):
            single = False
            if len(body) > MAX_BATCH:
                detail = f"a batch holds at most {MAX_BATCH} requests"
                return rpc_error(400, detail, INVALID_REQUEST, rid=None)
        else:
            detail = "a JSON-RPC request must be a JSON object (or a batch: an array of them)"
            return rpc_error(400, detail, PARSE_ERROR, rid=None)
        # As CometBFT: a notification (no id, or a null one) is not run and gets no answer;
        # the answers of a batch are a list, but one answer is sent as an object
        answers = [
            await answer(methods, item)
            for item in body
            if not isinstance(item, dict) or item.get("id") is not None
        ]
        if not answers:
            return Response(status_code=200)
        return JSONResponse(answers[0] if single or len(answers) == 1 else answers)

    install_websocket(app, engine, methods)
    return app


async def answer(methods: Methods, request: object) -> dict[str, Any]:
    """The JSON-RPC answer to one request object (an error object when it fails)."""
    if not isinstance(request, dict):
        detail = "a JSON-RPC request must be a JSON object"
        return {"jsonrpc": "2.0", "id": None, "error": error_json(INVALID_REQUEST, detail)}
    rid = request.get("id", -1)
    name = request.get("method")
    try:
        if not isinstance(name, str):
            raise RpcError(200, "the request names no method", METHOD_NOT_FOUND)
        result = await asyncio.to_thread(methods.call, name, request.get("params"))
    except RpcError as exc:
        return {"jsonrpc": "2.0", "id": rid, "error": error_json(exc.code, exc.message)}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


URI_BYTES = ("tx", "data")
"""Bytes parameters: in the URI form, as CometBFT reads them, a quoted value is the
string's own bytes (`data="abc"`) and 0x starts hex; bare, the devnet also reads base64
(tx) or hex (data)."""


def _route(app: FastAPI, methods: Methods, name: str) -> None:
    async def handler(request: Request) -> JSONResponse:
        methods.note_server(request.scope)
        params = dict(request.query_params)
        for key in URI_BYTES:
            value = params.get(key, "")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                params[key] = "0x" + value[1:-1].encode().hex()
        return JSONResponse(await answer(methods, {"id": -1, "method": name, "params": params}))

    app.add_api_route(f"/{name}", handler, methods=["GET"], name=name)


def rpc_error(status: int, message: str, code: int = -32602, *, rid: Any = -1) -> JSONResponse:
    """A JSON-RPC error answer with HTTP `status` (the request itself was unusable, or
    the gateway's conventions); a parse error carries no id, as CometBFT's."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "error": error_json(code, message)}
    if rid is None:
        del body["id"]
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
        return rpc_error(exc.status if exc.status >= 400 else 400, exc.message, exc.code)

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"code": exc.status, "message": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"code": 400, "message": validation_message(exc)}, status_code=400)
