"""tx_search / block_search: CometBFT's query language over the devnet's store, in process.

test_chain_rpc_parity.py checks the same queries against a real CometBFT indexer; this file
pins the semantics without one: what each operator matches, one event per query, paging
and order, and the errors.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from chain.chain_harness import CHAIN_ID, key, make_genesis

from r3mes.chain.engine import DevnetEngine, EngineConfig
from r3mes.chain.identity import NodeIdentity
from r3mes.chain.msgs import TransferCredits
from r3mes.chain.rpc import Methods
from r3mes.chain.rpc_json import RpcError, verify_tx_proof
from r3mes.chain.rpc_query import Condition, QuerySyntaxError, parse_query
from r3mes.chain.store import BlockStore
from r3mes.chain.tx import build_tx

A, B = key(1), key(2)


@pytest.mark.parametrize(
    ("query", "conditions"),
    [
        ("tx.height=5", [Condition("tx.height", "=", 5)]),
        ('"tx.height>=5"', [Condition("tx.height", ">=", 5)]),  # the URI form's quotes
        (
            "a.b<-2 AND c.d>1.5 AND e_f.g<=0",
            [
                Condition("a.b", "<", -2),
                Condition("c.d", ">", Decimal("1.5")),
                Condition("e_f.g", "<=", 0),
            ],
        ),
        (
            "t.k CONTAINS 'x y' AND t.k EXISTS",
            [Condition("t.k", "CONTAINS", "x y"), Condition("t.k", "EXISTS", None)],
        ),
        ("t.k='it''s'", None),  # no escapes in CometBFT strings: a second string is an error
        ("t.k = 'A AND B'", [Condition("t.k", "=", "A AND B")]),
    ],
)
def test_queries_parse_as_cometbfts(query: str, conditions: list[Condition] | None) -> None:
    if conditions is None:
        with pytest.raises(QuerySyntaxError):
            parse_query(query)
    else:
        assert list(parse_query(query)) == conditions


@pytest.mark.parametrize(
    "query",
    [
        "",
        "tx.height",
        "tx.height=",
        "tx.height=5 AND",
        "tx.height=5 tx.hash='A'",
        "5=tx.height",
        "t.k>'a'",
        "t.k CONTAINS 5",
        "t.k=TIME 2020-01-01",
        "t.k=²",
        "t.k=\u0661",
        "t.k=(1)",
        "t.k='unterminated",
        "a" * 2000,
    ],
)
def test_bad_queries_say_where(query: str) -> None:
    with pytest.raises(QuerySyntaxError):
        parse_query(query)


def _transfer(engine: DevnetEngine, sender: Any, seq: int, amount: int) -> bytes:
    acc = engine.state.accounts[sender.address]
    to = B.address if sender is A else A.address
    msg = TransferCredits(creator=sender.address, to=to, amount=amount)
    return build_tx([msg], key=sender, chain_id=CHAIN_ID, account_number=acc.number, sequence=seq)


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Methods, list[str]]:
    """Heights 1-4: A sends 1, 2, 3 to B (blocks 1, 2, 2), B sends 10 to A (block 4)."""
    store = BlockStore(tmp_path / "chain.db")
    store.init_genesis(make_genesis())
    engine = DevnetEngine(store, EngineConfig(block_interval_s=0.05))
    hashes = []
    for batch in ([(A, 0, 1)], [(A, 1, 2), (A, 2, 3)], [], [(B, 0, 10)]):
        for sender, seq, amount in batch:
            result = engine.submit(_transfer(engine, sender, seq, amount))
            assert result.code == 0, result.log
            hashes.append(result.hash)
        engine.produce_block()
    return Methods(engine, NodeIdentity.generate()), hashes


def _found(methods: Methods, query: str, **params: str) -> list[str]:
    return [t["hash"] for t in methods.tx_search(query, **params)["txs"]]


def test_tx_search_operators(chain: tuple[Methods, list[str]]) -> None:
    methods, (a1, a2, a3, b10) = chain
    assert _found(methods, f"message.sender='{A.address}'") == [a1, a2, a3]
    assert _found(methods, f"message.sender='{A.address}'", order_by="desc") == [a3, a2, a1]
    assert _found(methods, "tx.height=2") == [a2, a3]
    assert _found(methods, "tx.height>1 AND tx.height<4") == [a2, a3]
    assert _found(methods, "tx.height<=1") == [a1]
    assert _found(methods, f"tx.hash='{b10.lower()}'") == [b10]
    assert _found(methods, "transfer.amount>=2 AND transfer.amount<10") == [a2, a3]
    assert _found(methods, "transfer.amount>2") == [a3, b10]  # 10 > 2 as numbers, not text
    assert _found(methods, "transfer.amount='10'") == [b10]
    assert _found(methods, f"transfer.recipient CONTAINS '{A.address[-6:]}'") == [b10]
    assert _found(methods, "transfer.recipient EXISTS AND tx.height>=4") == [b10]
    assert _found(methods, "transfer.nothing EXISTS") == []
    assert _found(methods, "tx.hash EXISTS AND tx.height EXISTS") == [a1, a2, a3, b10]
    assert _found(methods, "tm.event='Tx'") == []  # not a tx attribute, as on CometBFT
    # one event must hold every attribute condition (CometBFT v0.38's indexer)
    assert _found(methods, f"transfer.sender='{A.address}' AND transfer.amount=3") == [a3]
    assert _found(methods, f"message.sender='{A.address}' AND transfer.amount=3") == []


def test_tx_search_pages_and_proofs(chain: tuple[Methods, list[str]]) -> None:
    methods, (a1, a2, a3, b10) = chain
    query = "transfer.amount>=1"
    pages = [methods.tx_search(query, page=str(p), per_page="3") for p in (1, 2)]
    assert [t["hash"] for p in pages for t in p["txs"]] == [a1, a2, a3, b10]
    assert {p["total_count"] for p in pages} == {"4"}
    assert len(methods.tx_search(query, per_page="0")["txs"]) == 4  # below 1: the default 30
    with pytest.raises(RpcError, match=r"page should be within \[1, 2\] range, given 3"):
        methods.tx_search(query, page="3", per_page="3")
    assert methods.tx_search("tx.height=99")["total_count"] == "0"  # page 1 of nothing
    for far in (str(2**63 - 1), "-5", "0"):  # beyond SQLite's int64 offsets, or below 1
        with pytest.raises(RpcError, match="page should be within"):
            methods.tx_search(query, page=far, per_page="100")
    proven = methods.tx_search("tx.height=2", prove="true")["txs"]
    assert [verify_tx_proof(t["proof"]) for t in proven] == [True, True]
    assert proven[1]["proof"]["proof"]["index"] == "1"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("tx.height>'2'", "wants a number"),
        ("tx.height=1.5", "integer within int64"),
        ("tx.height=9223372036854775808", "integer within int64"),
        ("tx.hash>5", "tx.hash takes = 'HEX' only"),
        ("transfer.amount>99999999999999999999", "integers within int64"),
        ("transfer.amount>1.5", "integers within int64"),
    ],
)
def test_tx_search_refuses_what_it_cannot_compare(
    chain: tuple[Methods, list[str]], query: str, says: str
) -> None:
    methods, _ = chain
    with pytest.raises(RpcError, match=says) as raised:
        methods.tx_search(query)
    assert raised.value.code == -32603


def test_block_search(chain: tuple[Methods, list[str]]) -> None:
    methods, _ = chain

    def heights(query: str, **params: str) -> list[str]:
        doc = methods.block_search(query, **params)
        assert doc["total_count"] == str(len(doc["blocks"])) or "per_page" in params
        return [b["block"]["header"]["height"] for b in doc["blocks"]]

    assert heights("block.height>=2 AND block.height<=3") == ["3", "2"]  # newest first
    assert heights("block.height>=2 AND block.height<=3", order_by="asc") == ["2", "3"]
    assert heights("round_opened.round=1") == ["1"]  # a begin-block event of block 1
    assert heights("round_opened.round EXISTS AND block.height>1") == []
    assert heights("block.height>=1", per_page="2", page="2") == ["2", "1"]
    with pytest.raises(RpcError, match="order_by"):
        methods.block_search("block.height>0", order_by="up")
