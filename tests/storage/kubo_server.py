"""A small real HTTP server speaking the slice of Kubo's RPC API and gateway R3MES uses.

Backed by a `Blockstore`, on 127.0.0.1 with an ephemeral port. `mode` makes it misbehave:
"good", "wrong-bytes" (flips one byte of every answer), "flaky" (first `fail_times`
requests answer 503), "down-api" (RPC answers 500 forever; gateway still works).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from r3mes.storage.blockstore import Blockstore, NotPinned
from r3mes.storage.errors import StorageError


@dataclass
class ServerState:
    store: Blockstore
    mode: str = "good"
    fail_times: int = 0
    requests: list[str] = field(default_factory=list)


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
                self._send(503, b'{"Message":"busy"}')
                return True
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self._flaky():
                return
            path = urlparse(self.path).path
            if not path.startswith("/ipfs/"):
                self._send(404, b"not found", "text/plain")
                return
            try:
                data = state.store.get_bytes(path[len("/ipfs/") :])
            except StorageError:
                self._send(404, b"not found", "text/plain")
                return
            self._send(200, data, "application/octet-stream")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            if self._flaky():
                return
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            if state.mode == "down-api":
                self._send(500, b'{"Message":"down"}')
                return
            try:
                self._dispatch(url.path, query, body)
            except NotPinned:
                self._send(500, b'{"Message":"not pinned or pinned indirectly"}')
            except StorageError as exc:
                self._send(500, json.dumps({"Message": str(exc)}).encode())

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
                self._send(200, state.store.get_bytes(query["arg"]), "text/plain")
            elif path == "/api/v0/pin/add":
                state.store.pin(query["arg"])
                self._send(200, json.dumps({"Pins": [query["arg"]]}).encode())
            elif path == "/api/v0/pin/rm":
                state.store.unpin(query["arg"])
                self._send(200, json.dumps({"Pins": [query["arg"]]}).encode())
            else:
                self._send(404, b'{"Message":"unknown command"}')

    return Handler


@contextmanager
def kubo_server(
    root: Path, mode: str = "good", fail_times: int = 0
) -> Iterator[tuple[str, ServerState]]:
    """Run the server in a thread; yield (base URL, state)."""
    state = ServerState(store=Blockstore(root), mode=mode, fail_times=fail_times)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
