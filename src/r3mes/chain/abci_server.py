"""The ledger behind CometBFT: ABCI 2.0 over CometBFT's socket protocol (v0.38).

CometBFT opens four connections (consensus, mempool, query, snapshot) and sends
protobuf `Request` messages, each prefixed with its length as an unsigned varint; every
request gets one `Response` of the same kind, in order, on the same connection. All four
connections share one `LedgerApplication` behind one lock, so a CheckTx never sees a
half-committed block.

Everything consensus-critical comes from the block CometBFT decided: its height, BFT time,
proposer and txs. The ledger's own header (`transition.Header`) is rebuilt from those and
the committed state, so every honest validator computes the same block hash, round seed and
app hash. Commit is the one step that writes; Info reports the committed height and app
hash, so CometBFT's handshake replays whatever a crashed app missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from r3mes.chain.application import APP_VERSION, LedgerApplication
from r3mes.chain.codes import Code
from r3mes.chain.errors import ChainError, GenesisError
from r3mes.chain.genesis import Genesis
from r3mes.chain.ledger import Event
from r3mes.chain.proto.gen.tendermint.abci import types_pb2 as abci
from r3mes.chain.store import BlockStore, tx_result_json
from r3mes.chain.transition import Block, Header, TxResult, data_hash
from r3mes.chain.tx import MAX_TX_BYTES
from r3mes.chain.views import QueryError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest request accepted (a FinalizeBlock carries the whole block)."""
SIMULATE_PATH = "/app/simulate"
"""Query path answering what a tx (the query data) would do in the next block, as JSON."""
VERSION = "r3mes-ledger"


class AbciProtocolError(ChainError):
    """The peer broke the framing (bad varint, oversized or undecodable message)."""


@dataclass(frozen=True)
class AbciConfig:
    home: Path
    """Folder of the app's store (`<home>/data/ledger.sqlite`), usually the CometBFT home."""
    lie_from_height: int = 0
    """Test-only fault switch: from this height on, report a wrong app hash (0: honest)."""

    def __post_init__(self) -> None:
        if self.lie_from_height < 0:
            raise ChainError("lie_from_height must be >= 0")


def store_path(home: Path) -> Path:
    return home / "data" / "ledger.sqlite"


def _time_ms(ts: Timestamp) -> int:
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def _events(events: Sequence[Event]) -> list[abci.Event]:
    return [
        abci.Event(
            type=e.type,
            attributes=[abci.EventAttribute(key=k, value=v, index=True) for k, v in e.attributes],
        )
        for e in events
    ]


class AbciApp:
    """One request in, one response out; thread-safe (one lock around the ledger)."""

    def __init__(self, config: AbciConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.store = BlockStore(store_path(config.home))
        self.ledger: LedgerApplication | None = None
        if self._has_genesis():
            self.ledger = LedgerApplication(self.store)
        self._pending: dict[str, int] = {}

    def _has_genesis(self) -> bool:
        try:
            self.store.genesis()
        except ChainError:
            return False
        return True

    def close(self) -> None:
        self.store.close()

    def _app(self) -> LedgerApplication:
        if self.ledger is None:
            raise ChainError("no chain yet: CometBFT must call InitChain first")
        return self.ledger

    def _app_hash(self, height: int, app_hash: str) -> bytes:
        real = bytes.fromhex(app_hash)
        lie = self.config.lie_from_height
        if lie and height >= lie:
            return bytes(b ^ 0xFF for b in real)
        return real

    def handle(self, request: abci.Request) -> abci.Response:
        kind = request.WhichOneof("value")
        handler = _HANDLERS.get(kind)
        if handler is None:
            return abci.Response(exception=abci.ResponseException(error=f"unknown {kind}"))
        with self._lock:
            response: abci.Response = handler(self, getattr(request, kind))
            return response

    # -- info and genesis -------------------------------------------------------------

    def info(self, req: abci.RequestInfo) -> abci.Response:
        if self.ledger is None:
            return abci.Response(info=abci.ResponseInfo(data=VERSION, app_version=APP_VERSION))
        state, app_hash = self.ledger.state, self.ledger.app_hash
        reply = abci.ResponseInfo(
            data=VERSION,
            version=VERSION,
            app_version=APP_VERSION,
            last_block_height=state.height,
            last_block_app_hash=self._app_hash(state.height, app_hash) if state.height else b"",
        )
        return abci.Response(info=reply)

    def init_chain(self, req: abci.RequestInitChain) -> abci.Response:
        try:
            genesis = Genesis.from_json(req.app_state_bytes.decode())
        except (GenesisError, UnicodeDecodeError) as exc:
            raise ChainError(f"genesis app_state is not an R3MES genesis: {exc}") from exc
        if genesis.chain_id != req.chain_id:
            raise ChainError(
                f"genesis chain_id {req.chain_id!r} differs from the app state's "
                f"{genesis.chain_id!r}"
            )
        if req.initial_height not in (0, 1):
            raise ChainError("the ledger starts at height 1 (initial_height must be 1)")
        if self.ledger is None:
            self.store.init_genesis(genesis)
            self.ledger = LedgerApplication(self.store)
        app_hash = self.ledger.init_chain(genesis)  # refuses a different chain
        log.info("InitChain %s: app hash %s", genesis.chain_id, app_hash)
        return abci.Response(init_chain=abci.ResponseInitChain(app_hash=bytes.fromhex(app_hash)))

    # -- mempool ----------------------------------------------------------------------

    def check_tx(self, req: abci.RequestCheckTx) -> abci.Response:
        if len(req.tx) > MAX_TX_BYTES:
            result = TxResult(code=Code.TOO_LARGE, log=f"tx exceeds {MAX_TX_BYTES} bytes")
        else:
            result = self._app().check_tx(req.tx, pending=self._pending)
            if result.code == 0:
                self._pending[result.signer] = result.sequence + 1
        reply = abci.ResponseCheckTx(code=result.code, log=result.log, codespace="remes")
        return abci.Response(check_tx=reply)

    # -- consensus --------------------------------------------------------------------

    def _block(
        self, *, height: int, time: Timestamp, proposer: bytes, txs: Sequence[bytes]
    ) -> Block:
        """The ledger's block for what CometBFT decided, on top of the committed state."""
        ledger = self._app()
        state = ledger.state
        header = Header(
            chain_id=state.chain_id,
            height=height,
            time_ms=_time_ms(time),
            last_block_hash=state.last_block_hash,
            app_hash=ledger.app_hash,
            data_hash=data_hash(txs),
            proposer=proposer.hex().upper(),
        )
        return Block(header=header, txs=tuple(txs))

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.Response:
        ledger = self._app()
        txs = ledger.prepare_proposal(
            req.txs, max_txs=ledger.state.params.max_block_txs, max_bytes=req.max_tx_bytes
        )
        return abci.Response(prepare_proposal=abci.ResponsePrepareProposal(txs=txs))

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.Response:
        block = self._block(
            height=req.height, time=req.time, proposer=req.proposer_address, txs=req.txs
        )
        ok = self._app().process_proposal(block)
        status = abci.ResponseProcessProposal.ACCEPT if ok else abci.ResponseProcessProposal.REJECT
        return abci.Response(process_proposal=abci.ResponseProcessProposal(status=status))

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.Response:
        block = self._block(
            height=req.height, time=req.time, proposer=req.proposer_address, txs=req.txs
        )
        result = self._app().finalize_block(block)
        reply = abci.ResponseFinalizeBlock(
            events=_events((*result.begin_events, *result.end_events)),
            tx_results=[
                abci.ExecTxResult(
                    code=r.code, log=r.log, codespace="remes", events=_events(r.events)
                )
                for r in result.tx_results
            ],
            app_hash=self._app_hash(result.height, result.app_hash),
        )
        return abci.Response(finalize_block=reply)

    def commit(self, req: abci.RequestCommit) -> abci.Response:
        retain = self._app().commit()
        self._pending.clear()  # CometBFT rechecks the mempool against the new state next
        return abci.Response(commit=abci.ResponseCommit(retain_height=retain))

    def extend_vote(self, req: abci.RequestExtendVote) -> abci.Response:
        return abci.Response(extend_vote=abci.ResponseExtendVote())

    def verify_vote_extension(self, req: abci.RequestVerifyVoteExtension) -> abci.Response:
        accept = abci.ResponseVerifyVoteExtension.ACCEPT
        return abci.Response(verify_vote_extension=abci.ResponseVerifyVoteExtension(status=accept))

    # -- queries ----------------------------------------------------------------------

    def query(self, req: abci.RequestQuery) -> abci.Response:
        ledger = self._app()
        height = ledger.state.height
        try:
            if req.path == SIMULATE_PATH:
                value = self._simulate(req.data)
            else:
                value = ledger.query(req.path, req.data)
        except QueryError as exc:
            # code: the HTTP status the REST gateway answers (400 bad request, 404 not found)
            reply = abci.ResponseQuery(
                code=exc.status, log=str(exc), height=height, codespace="remes"
            )
            return abci.Response(query=reply)
        return abci.Response(query=abci.ResponseQuery(code=0, value=value, height=height))

    def _simulate(self, raw: bytes) -> bytes:
        ledger = self._app()
        if len(raw) > MAX_TX_BYTES:
            result = TxResult(code=Code.TOO_LARGE, log=f"tx exceeds {MAX_TX_BYTES} bytes")
        else:
            time_ms = ledger.state.last_block_time_ms
            result = ledger.simulate(raw, time_ms=time_ms, pending=self._pending)
        return json.dumps(tx_result_json(result), sort_keys=True).encode()

    # -- the rest ---------------------------------------------------------------------

    def echo(self, req: abci.RequestEcho) -> abci.Response:
        return abci.Response(echo=abci.ResponseEcho(message=req.message))

    def flush(self, req: abci.RequestFlush) -> abci.Response:
        return abci.Response(flush=abci.ResponseFlush())

    def list_snapshots(self, req: abci.RequestListSnapshots) -> abci.Response:
        return abci.Response(list_snapshots=abci.ResponseListSnapshots())

    def offer_snapshot(self, req: abci.RequestOfferSnapshot) -> abci.Response:
        reject = abci.ResponseOfferSnapshot.REJECT  # no state sync: nodes replay blocks
        return abci.Response(offer_snapshot=abci.ResponseOfferSnapshot(result=reject))

    def load_snapshot_chunk(self, req: abci.RequestLoadSnapshotChunk) -> abci.Response:
        return abci.Response(load_snapshot_chunk=abci.ResponseLoadSnapshotChunk())

    def apply_snapshot_chunk(self, req: abci.RequestApplySnapshotChunk) -> abci.Response:
        abort = abci.ResponseApplySnapshotChunk.ABORT
        return abci.Response(apply_snapshot_chunk=abci.ResponseApplySnapshotChunk(result=abort))


_HANDLERS: dict[str | None, Any] = {
    "echo": AbciApp.echo,
    "flush": AbciApp.flush,
    "info": AbciApp.info,
    "init_chain": AbciApp.init_chain,
    "query": AbciApp.query,
    "check_tx": AbciApp.check_tx,
    "commit": AbciApp.commit,
    "list_snapshots": AbciApp.list_snapshots,
    "offer_snapshot": AbciApp.offer_snapshot,
    "load_snapshot_chunk": AbciApp.load_snapshot_chunk,
    "apply_snapshot_chunk": AbciApp.apply_snapshot_chunk,
    "prepare_proposal": AbciApp.prepare_proposal,
    "process_proposal": AbciApp.process_proposal,
    "extend_vote": AbciApp.extend_vote,
    "verify_vote_extension": AbciApp.verify_vote_extension,
    "finalize_block": AbciApp.finalize_block,
}


# -- framing ----------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame(message: abci.Request | abci.Response) -> bytes:
    body = bytes(message.SerializeToString())
    return encode_varint(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One length-prefixed message; None at a clean end of stream."""
    size, shift = 0, 0
    for index in range(10):
        byte = await reader.read(1)
        if not byte:
            if index == 0:
                return None
            raise AbciProtocolError("connection closed inside a length prefix")
        size |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
        shift += 7
    else:
        raise AbciProtocolError("length prefix longer than 10 bytes")
    if size > MAX_MESSAGE_BYTES:
        raise AbciProtocolError(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
    body: bytes = await reader.readexactly(size)
    return body


async def serve_connection(
    app: AbciApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer requests in order until the peer closes; a handler error answers Exception."""
    try:
        while (body := await read_frame(reader)) is not None:
            request = abci.Request.FromString(body)
            try:
                response = await asyncio.to_thread(app.handle, request)
            except Exception as exc:  # noqa: BLE001 - reported to CometBFT, which stops
                log.exception("ABCI %s failed", request.WhichOneof("value"))
                response = abci.Response(exception=abci.ResponseException(error=str(exc)))
            writer.write(frame(response))
            if request.HasField("flush"):
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        log.info("ABCI connection closed")
    except (AbciProtocolError, ValueError) as exc:
        log.error("ABCI connection dropped: %s", exc)
    finally:
        writer.close()


def parse_address(address: str) -> tuple[str, int]:
    """`tcp://HOST:PORT` -> (host, port)."""
    rest = address.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ChainError(f"ABCI address {address!r} must be tcp://HOST:PORT")
    return host, int(port)


async def serve(app: AbciApp, address: str, stop: asyncio.Event) -> None:
    """Listen on `address` until `stop` is set."""
    host, port = parse_address(address)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(app, reader, writer)

    server = await asyncio.start_server(on_connect, host, port)
    async with server:
        log.info("ABCI app listening on %s", address)
        await stop.wait()
