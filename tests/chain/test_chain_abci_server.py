"""The ABCI socket server without CometBFT: framing, and a block's life over a real socket.

The requests are the ones CometBFT v0.38 sends (built from its own generated types), over a
real asyncio TCP connection on 127.0.0.1; the real-CometBFT scenarios are in
test_chain_cometbft.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from chain.chain_harness import CHAIN_ID, key, make_genesis
from google.protobuf.timestamp_pb2 import Timestamp
from support.net import free_port

from r3mes.chain.abci_server import (
    SIMULATE_PATH,
    AbciApp,
    AbciConfig,
    AbciProtocolError,
    encode_varint,
    frame,
    read_frame,
    serve,
)
from r3mes.chain.codes import Code
from r3mes.chain.errors import ChainError
from r3mes.chain.msgs import TransferCredits
from r3mes.chain.proto.gen.remes.remes.v1 import query_pb2
from r3mes.chain.proto.gen.tendermint.abci import types_pb2 as abci
from r3mes.chain.tx import build_tx

GENESIS = make_genesis()


def transfer(sequence: int, amount: int = 5) -> bytes:
    sender = key(1)
    msg = TransferCredits(creator=sender.address, to=key(2).address, amount=amount)
    return build_tx([msg], key=sender, chain_id=CHAIN_ID, account_number=1, sequence=sequence)


def init_request() -> abci.Request:
    return abci.Request(
        init_chain=abci.RequestInitChain(
            chain_id=CHAIN_ID, initial_height=1, app_state_bytes=GENESIS.to_json().encode()
        )
    )


def block_time(height: int) -> Timestamp:
    return Timestamp(seconds=GENESIS.genesis_time_ms // 1000 + height, nanos=500_000_000)


def finalize(height: int, txs: list[bytes]) -> abci.Request:
    return abci.Request(
        finalize_block=abci.RequestFinalizeBlock(
            height=height, time=block_time(height), proposer_address=b"\x01" * 20, txs=txs
        )
    )


def commit() -> abci.Request:
    return abci.Request(commit=abci.RequestCommit())


def account_number_of(app: AbciApp) -> int:
    assert app.ledger is not None
    return app.ledger.state.accounts[key(1).address].number


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**32, 2**63])
def test_varint_round_trips(n: int) -> None:
    async def read() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_varint(n) + b"x" * min(n, 4))
        reader.feed_eof()
        size, shift = 0, 0
        for _ in range(10):
            byte = (await reader.read(1))[0]
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return size
        raise AssertionError

    assert asyncio.run(read()) == n


def test_read_frame_refuses_broken_framing() -> None:
    async def read(data: bytes) -> bytes | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader)

    assert asyncio.run(read(b"")) is None
    with pytest.raises(AbciProtocolError, match="exceeds"):
        asyncio.run(read(encode_varint(2**40)))
    with pytest.raises(AbciProtocolError, match="longer than 10"):
        asyncio.run(read(b"\xff" * 11))
    with pytest.raises(AbciProtocolError, match="inside a length prefix"):
        asyncio.run(read(b"\x80"))


def test_a_block_life_info_init_propose_finalize_commit_query(tmp_path: Path) -> None:
    app = AbciApp(AbciConfig(home=tmp_path))
    info = app.handle(abci.Request(info=abci.RequestInfo())).info
    assert info.last_block_height == 0 and info.last_block_app_hash == b""
    genesis_hash = app.handle(init_request()).init_chain.app_hash
    assert len(genesis_hash) == 32
    number = account_number_of(app)
    tx0 = build_tx(
        [TransferCredits(creator=key(1).address, to=key(2).address, amount=5)],
        key=key(1),
        chain_id=CHAIN_ID,
        account_number=number,
        sequence=0,
    )
    tx1 = build_tx(
        [TransferCredits(creator=key(1).address, to=key(2).address, amount=7)],
        key=key(1),
        chain_id=CHAIN_ID,
        account_number=number,
        sequence=1,
    )
    check = abci.Request(check_tx=abci.RequestCheckTx(tx=tx0))
    assert app.handle(check).check_tx.code == 0
    assert app.handle(abci.Request(check_tx=abci.RequestCheckTx(tx=tx1))).check_tx.code == 0
    replay = app.handle(check).check_tx  # same sequence again: refused
    assert replay.code == Code.WRONG_SEQUENCE
    prepare = abci.RequestPrepareProposal(txs=[tx0, tx1], max_tx_bytes=len(tx0), height=1)
    assert list(app.handle(abci.Request(prepare_proposal=prepare)).prepare_proposal.txs) == [tx0]
    process = abci.RequestProcessProposal(
        txs=[tx0, tx1], height=1, time=block_time(1), proposer_address=b"\x01" * 20
    )
    status = app.handle(abci.Request(process_proposal=process)).process_proposal.status
    assert status == abci.ResponseProcessProposal.ACCEPT
    wrong = abci.RequestProcessProposal(txs=[], height=5, time=block_time(5))
    status = app.handle(abci.Request(process_proposal=wrong)).process_proposal.status
    assert status == abci.ResponseProcessProposal.REJECT
    done = app.handle(finalize(1, [tx0, tx1])).finalize_block
    assert [r.code for r in done.tx_results] == [0, 0]
    assert done.tx_results[0].events[0].type == "message"
    assert app.handle(abci.Request(info=abci.RequestInfo())).info.last_block_height == 0
    app.handle(commit())
    info = app.handle(abci.Request(info=abci.RequestInfo())).info
    assert (info.last_block_height, info.last_block_app_hash) == (1, done.app_hash)
    account = query_pb2.QueryAccountRequest(address=key(2).address).SerializeToString()
    path = "/remes.remes.v1.Query/Account"
    reply = app.handle(abci.Request(query=abci.RequestQuery(path=path, data=account))).query
    doc = json.loads(query_pb2.QueryJsonResponse.FromString(reply.value).json)
    assert doc["account"]["balance"] == 1000 + 12 and reply.height == 1
    bad = app.handle(abci.Request(query=abci.RequestQuery(path="/nope"))).query
    assert bad.code == 400 and "unknown query path" in bad.log
    app.close()

    reopened = AbciApp(AbciConfig(home=tmp_path))  # Commit persisted: Info survives a restart
    again = reopened.handle(abci.Request(info=abci.RequestInfo())).info
    assert (again.last_block_height, again.last_block_app_hash) == (1, done.app_hash)
    reopened.close()


def test_finalize_is_deterministic_and_the_lie_switch_changes_only_the_reported_hash(
    tmp_path: Path,
) -> None:
    honest = AbciApp(AbciConfig(home=tmp_path / "a"))
    twin = AbciApp(AbciConfig(home=tmp_path / "b"))
    liar = AbciApp(AbciConfig(home=tmp_path / "c", lie_from_height=2))
    hashes = []
    for app in (honest, twin, liar):
        app.handle(init_request())
        row = []
        for height in (1, 2):
            row.append(app.handle(finalize(height, [])).finalize_block.app_hash)
            app.handle(commit())
        hashes.append(row)
        app.close()
    assert hashes[0] == hashes[1]
    assert hashes[2][0] == hashes[0][0] and hashes[2][1] != hashes[0][1]
    with pytest.raises(ChainError):
        AbciConfig(home=tmp_path, lie_from_height=-1)


def test_init_chain_refuses_a_foreign_or_mismatched_genesis(tmp_path: Path) -> None:
    app = AbciApp(AbciConfig(home=tmp_path))
    wrong_id = abci.RequestInitChain(
        chain_id="other-1", initial_height=1, app_state_bytes=GENESIS.to_json().encode()
    )
    with pytest.raises(ChainError, match="chain_id"):
        app.handle(abci.Request(init_chain=wrong_id))
    not_ours = abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=b'{"x": 1}')
    with pytest.raises(ChainError, match="not an R3MES genesis"):
        app.handle(abci.Request(init_chain=not_ours))
    app.close()


def test_socket_server_answers_in_order_and_simulates(tmp_path: Path) -> None:
    app = AbciApp(AbciConfig(home=tmp_path))
    port = free_port()

    async def scenario() -> list[abci.Response]:
        stop = asyncio.Event()
        server = asyncio.create_task(serve(app, f"tcp://127.0.0.1:{port}", stop))
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        requests = [
            abci.Request(echo=abci.RequestEcho(message="hi")),
            init_request(),
            abci.Request(query=abci.RequestQuery(path=SIMULATE_PATH, data=transfer(0))),
            abci.Request(list_snapshots=abci.RequestListSnapshots()),
            abci.Request(offer_snapshot=abci.RequestOfferSnapshot()),
            abci.Request(flush=abci.RequestFlush()),
        ]
        for request in requests:
            writer.write(frame(request))
        await writer.drain()
        responses = []
        for _ in requests:
            body = await read_frame(reader)
            assert body is not None
            responses.append(abci.Response.FromString(body))
        writer.close()
        stop.set()
        await server
        return responses

    responses = asyncio.run(scenario())
    kinds = [r.WhichOneof("value") for r in responses]
    assert kinds == [
        "echo",
        "init_chain",
        "query",
        "list_snapshots",
        "offer_snapshot",
        "flush",
    ]
    assert responses[0].echo.message == "hi"
    simulated = json.loads(responses[2].query.value)
    assert simulated["code"] == 0 and simulated["events"][0]["type"] == "message"
    assert responses[4].offer_snapshot.result == abci.ResponseOfferSnapshot.REJECT
    app.close()
