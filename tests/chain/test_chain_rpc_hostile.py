"""The ledger RPC answers hostile input with JSON-RPC errors, never HTTP 500 or a dropped socket."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from chain.chain_harness import DATASET, MODEL, key
from hypothesis import given, settings
from hypothesis import strategies as st
from support.net import free_port

from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.rpc import search_conditions
from r3mes.chain.rpc_json import MAX_HEIGHT, RpcError, decode_request, json_depth
from r3mes.paths import Home


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = Home(root=tmp_path_factory.mktemp("devnet"))
    init_devnet(home, devnet_genesis(accounts={key(1).address: 100}, artifacts=[MODEL, DATASET]))
    devnet = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.2))
    devnet.start()
    yield devnet.url
    devnet.stop()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _is_rpc_error(response: httpx.Response, *, status: int, says: str) -> dict[str, object]:
    """A CometBFT error object: fixed message per code, what went wrong in `data`."""
    assert response.status_code == status, response.text[:300]
    doc = response.json()
    assert doc["jsonrpc"] == "2.0"
    assert says in doc["error"]["data"], doc
    return dict(doc)


@pytest.mark.parametrize("depth", [50_000, 100_000])
def test_a_deeply_nested_body_is_a_parse_error(url: str, depth: int) -> None:
    response = httpx.post(url + "/", content=_nested(depth), timeout=10)
    doc = _is_rpc_error(response, status=400, says="nested")
    assert doc["error"]["code"] == -32700  # type: ignore[index]


@pytest.mark.parametrize("depth", [50_000, 100_000])
def test_deeply_nested_params_are_an_error(url: str, depth: int) -> None:
    body = '{"jsonrpc": "2.0", "id": 5, "method": "status", "params": ' + _nested(depth) + "}"
    response = httpx.post(url + "/", content=body, timeout=10)
    _is_rpc_error(response, status=400, says="nested")


def test_moderate_nesting_in_params_is_an_ordinary_error(url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 6, "method": "tx_search", "params": {"query": [[[1]]]}}
    response = httpx.post(url + "/", content=json.dumps(body), timeout=10)
    assert response.status_code == 200 and response.json()["id"] == 6  # as CometBFT's POST
    assert response.json()["error"]["code"] == -32603


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("tx.height=\u00b2", "tx.height"),
        ("tx.height=\u0661\u0662", "tx.height"),
        ("tx.height=99999999999999999999999", "tx.height"),
        ("tx.height=9223372036854775808", "tx.height"),
    ],
)
def test_tx_search_bad_heights_are_errors_over_get_and_post(
    url: str, query: str, says: str
) -> None:
    got = httpx.get(url + "/tx_search", params={"query": query}, timeout=10)
    _is_rpc_error(got, status=200, says=says)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tx_search", "params": {"query": query}}
    posted = httpx.post(url + "/", content=json.dumps(body), timeout=10)
    assert _is_rpc_error(posted, status=200, says=says)["id"] == 1


def test_tx_search_largest_height_is_fine(url: str) -> None:
    got = httpx.get(url + "/tx_search", params={"query": "tx.height=9223372036854775807"})
    assert got.status_code == 200 and got.json()["result"]["total_count"] == "0"


def test_unicode_digits_are_not_heights(url: str) -> None:
    got = httpx.get(url + "/block", params={"height": "\u0661"}, timeout=10)
    _is_rpc_error(got, status=200, says="height")


@pytest.mark.parametrize("depth", [20_000, 32_000])
def test_nested_json_over_the_websocket_gets_an_error_reply(url: str, depth: int) -> None:
    import websockets.sync.client

    with websockets.sync.client.connect(
        url.replace("http", "ws") + "/websocket", open_timeout=5
    ) as ws:
        ws.send(_nested(depth))
        reply = json.loads(ws.recv(timeout=5))
        assert reply["error"]["code"] == -32700 and "nested" in reply["error"]["data"]
        # the connection is still usable afterwards
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "status"}))
        status = json.loads(ws.recv(timeout=5))
        assert status["id"] == 2 and "sync_info" in status["result"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_request_decoding_only_raises_rpc_errors(data: bytes) -> None:
    try:
        decode_request(data)
    except RpcError as exc:
        assert exc.code == -32700 and exc.status == 400


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_tx_queries_only_raise_rpc_errors(query: str) -> None:
    try:
        conditions = search_conditions(query, "tx.height")
    except RpcError as exc:
        assert exc.code == -32603
    else:
        heights = [c.operand for c in conditions if c.tag == "tx.height" and c.op != "EXISTS"]
        assert all(isinstance(h, int) and abs(h) <= MAX_HEIGHT for h in heights)


def _containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(children, max_size=3) | st.dictionaries(
        st.text(max_size=3), children, max_size=3
    )


@given(st.recursive(st.none() | st.integers() | st.text(max_size=5), _containers, max_leaves=40))
def test_json_depth_counts_nesting_outside_strings(doc: object) -> None:
    def depth(value: object) -> int:
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        if isinstance(value, dict):
            return 1 + max((depth(v) for v in value.values()), default=0)
        return 0

    assert json_depth(json.dumps(doc).encode()) == depth(doc)
