"""Real Kubo (`ipfs`) daemons for tests, and a fault-injecting HTTP proxy in front of them.

`kubo_node(tmp)` starts `ipfs daemon` on a fresh repo made with `ipfs init --profile=test`:
API, gateway and swarm on free loopback ports, no bootstrap peers, no DHT; it is stopped and
its repo removed afterwards. The binary comes from `scripts/kubo.sh` (`go install` at the pinned
version); without it a test is skipped on a developer's machine and fails when `CI` is set.

`fault_proxy(url, mode=...)` forwards to a real node and misbehaves in one chosen way, so
fault tests exercise real Kubo answers plus the fault, never a fake Kubo:
"good", "flaky" (the first `fail_times` requests answer 503), "wrong-bytes" (flips the first
byte of every successful non-JSON body), "truncate" (drops the last byte of such bodies),
"down-api" (every /api/v0 call answers 500), "redirect" (the gateway answers 301).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from r3mes.storage.kubo_daemon import KuboDaemon as KuboNode
from r3mes.storage.kubo_daemon import KuboNotInstalled, find_ipfs, init_daemon
from support.net import free_port

__all__ = ["KuboNode", "fault_proxy", "init_node", "ipfs_binary", "kubo_node"]


def ipfs_binary() -> str:
    """Path of the `ipfs` binary: PATH, then Go's bin folder; skip (or fail under CI) if none."""
    gopath_bin = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin"
    try:
        return find_ipfs((gopath_bin,))
    except KuboNotInstalled as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def init_node(root: Path) -> KuboNode:
    """`ipfs init --profile=test` in `root / "ipfs"` on free loopback ports; not started."""
    return init_daemon(
        root / "ipfs",
        binary=ipfs_binary(),
        api_port=free_port(),
        gateway_port=free_port(),
        swarm_port=free_port(),
    )


@contextmanager
def kubo_node(root: Path) -> Iterator[KuboNode]:
    """A running daemon in `root`, stopped and removed afterwards."""
    node = init_node(root)
    node.start(log_path=root / "ipfs-daemon.log")
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.repo, ignore_errors=True)


@dataclass
class ProxyState:
    mode: str = "good"
    fail_times: int = 0
    requests: list[str] = field(default_factory=list)


def _proxy_handler(upstream: str, state: ProxyState) -> type[BaseHTTPRequestHandler]:
    client = httpx.Client(base_url=upstream, timeout=httpx.Timeout(60.0, connect=5.0))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def _reply(self, code: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def _handle(self, method: str) -> None:
            state.requests.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            json_type = {"Content-Type": "application/json"}
            if state.mode == "flaky" and state.fail_times > 0:
                state.fail_times -= 1
                message = {"Message": "busy", "Code": 0, "Type": "error"}
                self._reply(503, json.dumps(message).encode(), json_type)
                return
            if state.mode == "down-api" and self.path.startswith("/api/v0"):
                message = {"Message": "api down", "Code": 0, "Type": "error"}
                self._reply(500, json.dumps(message).encode(), json_type)
                return
            if state.mode == "redirect" and self.path.startswith("/ipfs/"):
                cid = self.path.split("/")[2]
                self._reply(301, b"", {"Location": f"http://{cid}.ipfs.localhost/"})
                return
            headers = {
                k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")
            }
            try:
                upstream_reply = client.request(method, self.path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self._reply(504, str(exc).encode(), {"Content-Type": "text/plain"})
                return
            data = upstream_reply.content
            ctype = upstream_reply.headers.get("content-type", "application/octet-stream")
            if upstream_reply.status_code == 200 and "json" not in ctype and data:
                if state.mode == "wrong-bytes":
                    data = bytes([data[0] ^ 1]) + data[1:]
                elif state.mode == "truncate":
                    data = data[:-1]
            self._reply(upstream_reply.status_code, data, {"Content-Type": ctype})

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            self._handle("POST")

    return Handler


@contextmanager
def fault_proxy(
    upstream: str, mode: str = "good", fail_times: int = 0
) -> Iterator[tuple[str, ProxyState]]:
    """A proxy on a free loopback port in front of `upstream`; yields (url, state)."""
    state = ProxyState(mode=mode, fail_times=fail_times)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(upstream, state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
