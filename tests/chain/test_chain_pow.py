"""Proof of work, ABCI query routing and JSON views."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from chain.chain_harness import Harness, key
from hypothesis import given, settings
from hypothesis import strategies as st

from r3mes.chain import abci
from r3mes.chain.errors import ChainError
from r3mes.chain.msgs import SubmitGradient
from r3mes.chain.pow import leading_zero_bits, pow_ok, pow_preimage, solve_pow
from r3mes.chain.proto.gen.remes.remes.v1 import query_pb2
from r3mes.chain.views import QueryError, artifacts_json, leaderboard_json, nodes_json

MSG = SubmitGradient(creator=key(1).address, round=3, shard=1, cid="bafyx", digest="ab" * 32)


def test_progress_is_reported_while_searching() -> None:
    seen: list[int] = []
    solved = solve_pow(MSG, chain_id="c1", difficulty=10, on_progress=seen.append, progress_every=8)
    assert pow_ok(solved, chain_id="c1", difficulty=10)
    assert seen and seen == list(range(8, solved.pow_nonce + 1, 8))
    assert solve_pow(MSG, chain_id="c1", difficulty=10) == solved  # same nonce either way


def test_solution_meets_difficulty_and_is_bound_to_submission() -> None:
    solved = solve_pow(MSG, chain_id="c1", difficulty=10)
    assert pow_ok(solved, chain_id="c1", difficulty=10)
    assert not pow_ok(solved, chain_id="c1", difficulty=40)
    # The same nonce is (almost surely) useless for another chain, round or cid.
    others = [
        ("c2", solved),
        ("c1", replace(solved, round=4)),
        ("c1", replace(solved, cid="bafyy")),
    ]
    assert sum(pow_ok(m, chain_id=c, difficulty=10) for c, m in others) <= 1
    assert pow_ok(MSG, chain_id="c1", difficulty=0)
    with pytest.raises(ChainError):
        solve_pow(MSG, chain_id="c1", difficulty=65)
    with pytest.raises(ChainError, match="no proof-of-work"):
        solve_pow(MSG, chain_id="c1", difficulty=60, max_attempts=10)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_leading_zero_bits(digest: bytes) -> None:
    bits = leading_zero_bits(digest)
    assert digest[: bits // 8] == b"\x00" * (bits // 8)
    if bits < 256:
        assert (digest[bits // 8] >> (7 - bits % 8)) & 1 == 1


def test_preimage_is_length_prefixed() -> None:
    a = replace(MSG, cid="ab", digest="c" + MSG.digest[1:])
    b = replace(MSG, cid="abc", digest=MSG.digest)
    assert pow_preimage(a, chain_id="x") != pow_preimage(b, chain_id="x")


def test_abci_query_routes_and_errors() -> None:
    h = Harness()
    h.block()
    raw = abci.query(
        h.state, "/remes.remes.v1.Query/Round", query_pb2.QueryRoundRequest().SerializeToString()
    )
    doc = json.loads(query_pb2.QueryJsonResponse.FromString(raw).json)
    assert doc["round"]["number"] == 1 and doc["round"]["base_model_cid"] == "bafymodel"
    with pytest.raises(QueryError, match="unknown query path"):
        abci.query(h.state, "/cosmos.bank.v1beta1.Query/Balance", b"")
    with pytest.raises(QueryError, match="malformed"):
        abci.query(h.state, "/remes.remes.v1.Query/Account", b"\xff\xff")
    with pytest.raises(QueryError):
        abci.query(
            h.state,
            "/remes.remes.v1.Query/Round",
            query_pb2.QueryRoundRequest(round=99).SerializeToString(),
        )


def test_views_validate_filters() -> None:
    h = Harness()
    assert [a["kind"] for a in artifacts_json(h.state, None, None)] == ["dataset", "model"]
    assert artifacts_json(h.state, "adapter", "all") == []
    refused: tuple[Callable[[], object], ...] = (
        lambda: artifacts_json(h.state, "x", None),
        lambda: artifacts_json(h.state, None, "x"),
        lambda: nodes_json(h.state, "king", False),
        lambda: leaderboard_json(h.state, 0),
    )
    for bad in refused:
        with pytest.raises(QueryError):
            bad()
