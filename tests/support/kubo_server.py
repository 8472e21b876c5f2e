"""A small real HTTP server speaking the slice of Kubo's RPC API and gateway R3MES uses.

Backed by a `Blockstore`, on 127.0.0.1 with an ephemeral port. Like Kubo: errors are HTTP 500
with `{"Message", "Code": 0, "Type": "error"}`; a CID the node does not have is not an error
but a search that never ends, so `cat` and the gateway hold the request open until the client
gives up (or `missing_block_s` passes: then 500 / 504, as Kubo's own timeouts answer).

`mode` makes it misbehave: "good", "wrong-bytes" (flips one byte of every answer), "flaky"
(first `fail_times` requests answer 503), "down-api" (RPC answers 500 forever; gateway still
works), "redirect" (the gateway answers 301 to a subdomain gateway, as Kubo does for
`/ipfs/CID` on `localhost` with subdomain gateways enabled).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from r3mes.storage.blockstore import Blockstore, NotPinned
from r3mes.storage.errors import BlockNotFound, StorageError


@dataclass
class ServerState:
    store: Blockstore
    mode: str = "good"
    fail_times: int = 0
    missing_block_s: float = 60.0
    requests: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)


def kubo_error(message: str) -> bytes:
    """Kubo's error body."""
    return json.dumps({"Message": message, "Code": 0, "Type": "error"}).encode()


def _multipart_file(body: bytes, content_type: str) -> bytes:
    boundary = content_type.split("boundary=")[1].strip().strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, sep, rest = part.partition(b"\r\n\r\n")
        if sep and b"filename=" in head:
            return rest[: -len(b"\r\n")] if rest.endswith(b"\r\n") else rest
    raise ValueError("no file part")


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            if state.mode == "wrong-bytes" and code == 200 and ctype != "application/json":
                body = bytes([body[0] ^ 1]) + body[1:] if body else b"?"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _flaky(self) -> bool:
            state.requests.append(self.path)
            if state.mode == "flaky" and state.fail_times > 0:
                state.fail_times -= 1
                self._send(503, kubo_error("busy"))
                return True
            return False

        def _hold_until_client_leaves(self) -> bool:
            """Kubo searching the network for a block nobody has; True if the client left."""
            end = time.monotonic() + state.missing_block_s
            while time.monotonic() < end and not state.stopping.is_set():
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable:
                    try:
                        if not self.connection.recv(1, socket.MSG_PEEK):
                            return True
                    except OSError:
                        return True
            return False

        def _read(self, cid: str) -> bytes | None:
            """The content, or None once the request was answered (missing: held first)."""
            try:
                return state.store.get_bytes(cid)
            except BlockNotFound:
                if not self._hold_until_client_leaves():
                    self._send(504 if self.command == "GET" else 500, kubo_error("timed out"))
                self.close_connection = True
            except StorageError as exc:
                self._send(500, kubo_error(str(exc)))
            return None

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self._flaky():
                return
            path = urlparse(self.path).path
            if not path.startswith("/ipfs/"):
                self._send(404, b"404 page not found", "text/plain")
                return
            cid = path[len("/ipfs/") :]
            if state.mode == "redirect":
                body = b"<a href='/'>Moved Permanently</a>."
                self.send_response(301)
                self.send_header("Location", f"http://{cid}.ipfs.localhost:8080/")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            data = self._read(cid)
            if data is not None:
                self._send(200, data, "application/octet-stream")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            if self._flaky():
                return
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            if state.mode == "down-api":
                self._send(500, kubo_error("down"))
                return
            try:
                self._dispatch(url.path, query, body)
            except NotPinned:
                self._send(500, kubo_error("not pinned or pinned indirectly"))
            except StorageError as exc:
                self._send(500, kubo_error(str(exc)))

        def _dispatch(self, path: str, query: dict[str, str], body: bytes) -> None:
            if path == "/api/v0/add":
                data = _multipart_file(body, self.headers["Content-Type"])
                cid = state.store.add_bytes(
                    data,
                    cid_version=int(query.get("cid-version", "0")),
                    pin=query.get("pin", "true") == "true",
                )
                self._send(200, json.dumps({"Name": "blob", "Hash": cid, "Size": "1"}).encode())
            elif path == "/api/v0/cat":
                data = self._read(query["arg"])
                if data is not None:
                    self._send(200, data, "text/plain")
            elif path == "/api/v0/pin/add":
                state.store.pin(query["arg"])
                self._send(200, json.dumps({"Pins": [query["arg"]]}).encode())
            elif path == "/api/v0/pin/rm":
                state.store.unpin(query["arg"])
                self._send(200, json.dumps({"Pins": [query["arg"]]}).encode())
            else:
                self._send(404, b"404 page not found", "text/plain")

    return Handler


@contextmanager
def kubo_server(
    root: Path, mode: str = "good", fail_times: int = 0, missing_block_s: float = 60.0
) -> Iterator[tuple[str, ServerState]]:
    """Run the server in a thread; yield (base URL, state)."""
    state = ServerState(
        store=Blockstore(root), mode=mode, fail_times=fail_times, missing_block_s=missing_block_s
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        state.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
