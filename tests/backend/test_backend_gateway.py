"""Node directory, routing, circuit breaker and fail-over, against real stub nodes on sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from support.upstream import ADAPTER, BASE, Upstream

from r3mes.backend.errors import Unavailable
from r3mes.backend.services.gateway import Gateway, NodeFailure, Relay, Tally, relay
from r3mes.backend.services.metrics import GatewayMetrics
from r3mes.backend.services.nodes import Announced, ModelRef, NodeDirectory, parse_static
from r3mes.backend.services.upstream_http import UpstreamTransport

pytestmark = pytest.mark.anyio
COOLDOWN_S = 2.0


@pytest.fixture
def nodes() -> Iterator[list[Upstream]]:
    started = [Upstream().start(), Upstream().start()]
    try:
        yield started
    finally:
        for node in started:
            node.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # the transport the backend's gateway uses (`chat_setup._upstream_client`)
    async with httpx.AsyncClient(transport=UpstreamTransport()) as client:
        yield client


def announce(node: Upstream, name: str, *, capacity: int = 4, version: int = 0) -> Announced:
    return Announced(name, node.url, capacity, version, name)


async def directory_of(
    http: httpx.AsyncClient, nodes: list[Upstream], **kw: float
) -> NodeDirectory:
    kw.setdefault("cooldown_s", 0.3)
    directory = NodeDirectory(http=http, failures_to_trip=2, **kw)  # type: ignore[arg-type]
    fresh = directory.update([announce(n, f"node{i}") for i, n in enumerate(nodes)])
    assert len(fresh) == len(nodes)
    assert all(await asyncio.gather(*(directory.probe(n) for n in fresh)))
    return directory


def test_model_refs_and_static_entries() -> None:
    assert ModelRef.parse("r3mes-adapter@3") == ModelRef("r3mes-adapter", 3)
    assert ModelRef.parse("r3mes-adapter") == ModelRef("r3mes-adapter")
    assert ModelRef.parse("x@y") == ModelRef("x@y")
    assert str(ModelRef("a", 2)) == "a@2"
    static = parse_static(["http://h:1/", "remes1abc=https://n:2"], capacity=3)
    assert [(a.key, a.endpoint, a.operator) for a in static] == [
        ("static:http://h:1", "http://h:1", None),
        ("remes1abc", "https://n:2", "remes1abc"),
    ]
    with pytest.raises(ValueError, match="not an http"):
        parse_static(["ftp://x"], capacity=1)


async def test_routing_prefers_least_loaded_relative_to_capacity(
    http: httpx.AsyncClient, nodes: list[Upstream]
) -> None:
    directory = await directory_of(http, nodes)
    a, b = directory.nodes["node0"], directory.nodes["node1"]
    assert a.models == {BASE, ADAPTER} and a.base_model == BASE
    a.capacity, b.capacity = 8, 2
    a.in_flight, b.in_flight = 3, 1  # 3/8 < 1/2
    assert directory.pick(ModelRef(ADAPTER), exclude=set()) is a
    a.in_flight = 5  # 5/8 > 1/2
    assert directory.pick(ModelRef(ADAPTER), exclude=set()) is b
    assert directory.pick(ModelRef(ADAPTER), exclude={"node1"}) is a
    assert directory.pick(ModelRef("nope"), exclude=set()) is None
    # equally loaded nodes take turns (requests that never overlap still spread)
    a.capacity, b.capacity, a.in_flight, b.in_flight = 4, 4, 0, 0
    turns = [directory.pick(ModelRef(ADAPTER), exclude=set()) for _ in range(4)]
    assert turns[0] is not turns[1] and turns[:2] == turns[2:]
    assert not directory.known_model(ModelRef("nope"))
    # a pinned adapter version goes only to nodes announcing that version
    directory.update(
        [announce(nodes[0], "node0", version=2), announce(nodes[1], "node1", version=3)]
    )
    assert directory.pick(ModelRef(ADAPTER, 3), exclude=set()) is b
    assert directory.pick(ModelRef(ADAPTER, 2), exclude=set()) is a
    assert directory.pick(ModelRef(ADAPTER, 9), exclude=set()) is None
    assert directory.pick(ModelRef(BASE, 2), exclude=set()) is None
    # a node that leaves the ledger leaves the directory
    directory.update([announce(nodes[0], "node0")])
    assert set(directory.nodes) == {"node0"}


async def test_breaker_trips_cools_down_and_probe_brings_it_back(
    http: httpx.AsyncClient, nodes: list[Upstream]
) -> None:
    # a cool-down long enough that "not over yet" holds on a loaded machine
    directory = await directory_of(http, nodes[:1], cooldown_s=COOLDOWN_S)
    node = directory.nodes["node0"]
    directory.failed(node, "x")
    assert directory.pick(ModelRef(BASE), exclude=set()) is node  # one failure: still used
    directory.failed(node, "x")
    assert directory.pick(ModelRef(BASE), exclude=set()) is None  # tripped
    assert directory.describe()["nodes"]["node0"]["circuit"] == "open"
    await directory.probe_due()  # cool-down not over: not probed, still open
    assert directory.pick(ModelRef(BASE), exclude=set()) is None
    await asyncio.sleep(COOLDOWN_S + 0.1)
    await directory.probe_due()
    assert directory.pick(ModelRef(BASE), exclude=set()) is node
    assert node.failures == 0
    # a probe that fails after the cool-down re-opens it for another cool-down
    directory.failed(node, "x")
    directory.failed(node, "x")
    nodes[0].stop()
    await asyncio.sleep(COOLDOWN_S + 0.1)
    await directory.probe_due()
    assert directory.pick(ModelRef(BASE), exclude=set()) is None
    assert directory.describe()["ok"] is False


def gateway_of(directory: NodeDirectory, http: httpx.AsyncClient) -> Gateway:
    return Gateway(
        directory=directory,
        http=http,
        metrics=GatewayMetrics(),
        attempts=3,
        first_byte_timeout_s=3.0,  # the stub node answers at once; a hung one costs this
        timeout_s=5.0,
    )


def chat_payload(stream: bool = False, model: str = ADAPTER) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


@pytest.mark.parametrize("fault", ["500", "hang", "wrong_model", "down"])
async def test_fail_over_before_the_first_byte(
    http: httpx.AsyncClient, nodes: list[Upstream], fault: str
) -> None:
    directory = await directory_of(http, nodes)
    bad, good = directory.nodes["node0"], directory.nodes["node1"]
    good.in_flight = 1  # the bad node is the first choice
    if fault == "down":
        nodes[0].stop()
    else:
        nodes[0].behaviour.fail = fault
    gateway = gateway_of(directory, http)
    for stream in (False, True):
        opened = await gateway.open(
            path="/v1/chat/completions",
            payload=chat_payload(stream),
            model=ModelRef(ADAPTER),
            stream=stream,
        )
        assert opened.node is good and opened.attempts == 2
        assert opened.headers["x-r3mes-node"] == "node1"
        await opened.response.aclose()
        gateway.finished(opened, failed=None)
    assert bad.failures == 2 and directory.pick(ModelRef(ADAPTER), exclude=set()) is good
    assert good.in_flight == 1 and bad.in_flight == 0
    failures = gateway.metrics.render().decode()
    assert 'r3mes_gateway_upstream_failures_total{node="node0"' in failures
    # with the only good node excluded by failing too, the client gets a clean 503
    nodes[1].behaviour.fail = "500"
    with pytest.raises(Unavailable, match="no serving node could serve"):
        await gateway.open(
            path="/v1/chat/completions",
            payload=chat_payload(),
            model=ModelRef(ADAPTER),
            stream=False,
        )
    assert good.in_flight == 1


async def test_relay_counts_what_was_delivered(
    http: httpx.AsyncClient, nodes: list[Upstream]
) -> None:
    directory = await directory_of(http, nodes[:1])
    gateway = gateway_of(directory, http)
    settled: list[tuple[Tally, str]] = []

    async def settle(tally: Tally, status: str) -> None:
        settled.append((tally, status))

    async def run(wants_usage: bool) -> list[bytes]:
        opened = await gateway.open(
            path="/v1/chat/completions",
            payload=chat_payload(True),
            model=ModelRef(ADAPTER),
            stream=True,
        )
        out = []
        async for event in relay(
            gateway, opened, client_wants_usage=wants_usage, deadline_s=5, settle=settle
        ):
            out.append(event)
        return out

    with_usage = await run(True)
    without = await run(False)
    assert len(with_usage) == len(without) + 1  # the usage chunk only when asked
    assert with_usage[-1] == b"data: [DONE]\n\n"
    (t1, s1), (t2, s2) = settled
    assert s1 == s2 == "ok"
    assert t1.chunks == 4 and t1.usage is not None and t1.usage.completion_tokens == 4
    # a node dying mid-stream: the client gets an error event and [DONE]; 2 tokens billed
    nodes[0].behaviour.fail = "die_after:2"
    cut = await run(True)
    assert b"upstream_error" in cut[-2] and cut[-1] == b"data: [DONE]\n\n"
    tally, status = settled[-1]
    assert status == "error" and tally.usage is None and tally.delivered().completion_tokens == 2
    assert directory.nodes["node0"].failures == 1


async def test_node_failure_reason_is_typed() -> None:
    failure = NodeFailure("busy", trips=False)
    assert failure.reason == "busy" and not failure.trips


async def test_a_stream_never_sent_still_frees_the_node_and_settles(
    http: httpx.AsyncClient, nodes: list[Upstream]
) -> None:
    directory = await directory_of(http, nodes[:1])
    gateway = gateway_of(directory, http)
    settled: list[tuple[Tally, str]] = []

    async def settle(tally: Tally, status: str) -> None:
        settled.append((tally, status))

    opened = await gateway.open(
        path="/v1/chat/completions",
        payload=chat_payload(True),
        model=ModelRef(ADAPTER),
        stream=True,
    )
    assert directory.nodes["node0"].in_flight == 1
    body = Relay(gateway, opened, client_wants_usage=False, deadline_s=5, settle=settle)
    await body.aclose()  # the client left before the response began
    await body.aclose()  # closing twice settles once
    assert directory.nodes["node0"].in_flight == 0
    assert [(t.delivered().total, s) for t, s in settled] == [(0, "cancelled")]
