"""The gateway's HTTP/1.1 transport to serving nodes, against raw HTTP servers on sockets:
keep-alive reuse, streamed and chunked bodies, every way a node can fail mid-exchange."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from r3mes.backend.services.upstream_http import MAX_HEADER_BYTES, UpstreamTransport

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class RawServer:
    """An HTTP server written by hand: `handler` answers each request on a connection."""

    def __init__(self, handler: Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]):
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.handler(len(self.requests), head + body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def answer_ok(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    await writer.drain()
    return True


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=UpstreamTransport()) as c:
        yield c


async def test_requests_reuse_one_kept_alive_connection(client: httpx.AsyncClient) -> None:
    async with RawServer(answer_ok) as server:
        for _ in range(5):
            r = await client.post(f"{server.url}/v1/chat/completions?x=1", content=b'{"a":1}')
            assert (r.status_code, r.json(), r.headers["content-type"]) == (
                200,
                {},
                "application/json",
            )
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
        assert b"content-length: 7\r\n" in first.lower() and first.endswith(b'{"a":1}')
        # concurrent requests each get a connection; afterwards they are all reused
        await asyncio.gather(*(client.get(f"{server.url}/v1/models") for _ in range(4)))
        before = server.connections
        await asyncio.gather(*(client.get(f"{server.url}/v1/models") for _ in range(4)))
        assert server.connections == before <= 5
        assert b"content-length" not in server.requests[-1].lower()  # a GET has no body


async def test_a_streamed_chunked_body_arrives_as_it_is_sent(client: httpx.AsyncClient) -> None:
    release = asyncio.Event()

    async def stream(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"6\r\nfirst\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
        await writer.drain()
        return True

    async with RawServer(stream) as server:
        request = client.build_request("POST", f"{server.url}/v1/completions", content=b"{}")
        response = await client.send(request, stream=True)
        chunks = response.aiter_raw()
        assert await asyncio.wait_for(anext(chunks), 10) == b"first\n"  # before the rest
        release.set()
        assert b"".join([c async for c in chunks]) == b"second\n"
        await response.aclose()
        release.clear()
        release.set()
        assert (await client.post(f"{server.url}/v1/completions")).text == "first\nsecond\n"
        assert server.connections == 1


async def test_a_node_closing_mid_body_is_an_error_and_the_connection_is_dropped(
    client: httpx.AsyncClient,
) -> None:
    async def cut(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            await writer.drain()
            return False  # closes the connection
        writer.write(OK)
        return True

    async with RawServer(cut) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(f"{server.url}/x", content=b"{}")
        assert (await client.post(f"{server.url}/x", content=b"{}")).json() == {}
        assert server.connections == 2


async def test_a_response_closed_early_drops_its_connection(client: httpx.AsyncClient) -> None:
    async def slow(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        return True  # never finishes this body

    async with RawServer(slow) as server:
        request = client.build_request("POST", f"{server.url}/x", content=b"{}")
        response = await client.send(request, stream=True)
        assert await anext(response.aiter_raw()) == b"abc"
        await response.aclose()
        request = client.build_request("POST", f"{server.url}/x", content=b"{}")
        response = await client.send(request, stream=True)
        await response.aclose()
        assert server.connections == 2  # the unfinished one was not reused


async def test_an_idle_connection_the_node_closed_is_replaced(client: httpx.AsyncClient) -> None:
    async def once(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK)
        await writer.drain()
        return False  # keep-alive answer, then the server closes the idle connection

    async with RawServer(once) as server:
        for _ in range(3):
            assert (await client.post(f"{server.url}/x", content=b"{}")).json() == {}
            await asyncio.sleep(0.05)  # the close reaches the client (else: retried, below)
        assert server.connections == 3


async def test_a_stale_connection_is_retried_once_on_a_new_one(client: httpx.AsyncClient) -> None:
    async def close_without_answer(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 2:
            return False  # the reused connection closes without a byte
        writer.write(OK)
        await writer.drain()
        return True

    async with RawServer(close_without_answer) as server:
        assert (await client.post(f"{server.url}/x", content=b"{}")).json() == {}
        assert (await client.post(f"{server.url}/x", content=b"{}")).json() == {}
        assert len(server.requests) == 3 and server.connections == 2


async def test_a_body_ended_by_closing_the_connection_is_read_whole(
    client: httpx.AsyncClient,
) -> None:
    async def until_close(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()
        return False

    async with RawServer(until_close) as server:
        assert (await client.post(f"{server.url}/x", content=b"{}")).text == "all of it"
        assert (await client.post(f"{server.url}/x", content=b"{}")).text == "all of it"
        assert server.connections == 2


async def test_timeouts_and_refusals_are_httpx_errors(client: httpx.AsyncClient) -> None:
    never = asyncio.Event()

    async def silent(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        await never.wait()
        return False

    async with RawServer(silent) as server:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{server.url}/x", content=b"{}", timeout=0.2)
        never.set()
    async with RawServer(answer_ok) as server:
        url = server.url
    with pytest.raises(httpx.ConnectError):
        await client.post(f"{url}/x", content=b"{}")
    with pytest.raises(httpx.UnsupportedProtocol):
        await client.get("ftp://127.0.0.1/x")


async def test_malformed_and_oversized_answers_are_protocol_errors(
    client: httpx.AsyncClient,
) -> None:
    async def garbage(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        else:
            huge = b"x-big: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n"
            writer.write(b"HTTP/1.1 200 OK\r\n" + huge + b"content-length: 0\r\n\r\n")
        await writer.drain()
        return n < 2

    async with RawServer(garbage) as server:
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(f"{server.url}/x", content=b"{}")


async def test_connections_in_use_are_capped() -> None:
    release = asyncio.Event()

    async def held(n: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(OK)
        await writer.drain()
        return True

    transport = UpstreamTransport(max_connections=1)
    async with httpx.AsyncClient(transport=transport) as capped, RawServer(held) as server:
        first = asyncio.create_task(capped.post(f"{server.url}/x", content=b"{}"))
        while not server.requests:
            await asyncio.sleep(0.01)
        with pytest.raises(httpx.PoolTimeout):
            await capped.post(f"{server.url}/x", content=b"{}", timeout=httpx.Timeout(5, pool=0.2))
        release.set()
        assert (await first).json() == {}
        assert (await capped.post(f"{server.url}/x", content=b"{}")).json() == {}
        assert server.connections == 1
