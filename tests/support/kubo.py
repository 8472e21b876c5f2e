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
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from support.net import free_port

KUBO_VERSION = "0.42.0"
START_TIMEOUT_S = 60.0


def ipfs_binary() -> str:
    """Path of the `ipfs` binary: PATH, then Go's bin folder; skip (or fail under CI) if none."""
    found = shutil.which("ipfs")
    gopath_bin = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / "ipfs"
    if found is None and gopath_bin.is_file():
        found = str(gopath_bin)
    if found:
        return found
    message = "no `ipfs` (Kubo) binary; install it: bash scripts/kubo.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class KuboNode:
    """One running daemon; `ipfs(...)` runs the CLI against its repo."""

    repo: Path
    api_url: str
    gateway_url: str
    swarm_port: int
    binary: str
    process: subprocess.Popen[str] | None = None
    peer_id: str = ""

    def ipfs(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run(
            [self.binary, *args],
            env={**os.environ, "IPFS_PATH": str(self.repo)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ipfs {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    @property
    def swarm_addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.swarm_port}/p2p/{self.peer_id}"

    def pins(self) -> set[str]:
        """Recursively pinned CIDs, as `ipfs pin ls` reports them (CIDv1 base32 strings)."""
        out = self.ipfs("pin", "ls", "--type=recursive", "--quiet", "--cid-base=base32")
        return set(out.split())

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "daemon", "--enable-gc=false"],
            env={**os.environ, "IPFS_PATH": str(self.repo)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.process.stdout.read() if self.process.stdout else ""
                raise RuntimeError(f"ipfs daemon exited: {out[-2000:]}")
            try:
                reply = httpx.post(f"{self.api_url}/api/v0/id", timeout=1.0)
                if reply.status_code == 200:
                    self.peer_id = reply.json()["ID"]
                    # drain the daemon's output so it never blocks on a full pipe
                    threading.Thread(target=self._drain, daemon=True).start()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ipfs daemon did not answer within {START_TIMEOUT_S} s")

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for _ in self.process.stdout:
            continue

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def connect(self, other: KuboNode) -> None:
        """Swarm-connect to `other` (bitswap then finds blocks between the two)."""
        self.ipfs("swarm", "connect", other.swarm_addr)


def init_node(root: Path) -> KuboNode:
    """`ipfs init --profile=test` in `root` with loopback ports; not started."""
    binary = ipfs_binary()
    repo = root / "ipfs"
    repo.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "IPFS_PATH": str(repo)}
    subprocess.run(
        [binary, "init", "--profile=test"], env=env, check=True, capture_output=True, timeout=60
    )
    api, gateway, swarm = free_port(), free_port(), free_port()
    settings = {
        "Addresses.API": json.dumps(f"/ip4/127.0.0.1/tcp/{api}"),
        "Addresses.Gateway": json.dumps(f"/ip4/127.0.0.1/tcp/{gateway}"),
        "Addresses.Swarm": json.dumps([f"/ip4/127.0.0.1/tcp/{swarm}"]),
        "Bootstrap": "[]",
        "Routing.Type": json.dumps("none"),
        "Discovery.MDNS.Enabled": "false",
        "Swarm.DisableNatPortMap": "true",
        "AutoTLS.Enabled": "false",
        "AutoConf.Enabled": "false",
    }
    for key, value in settings.items():
        subprocess.run(
            [binary, "config", "--json", key, value],
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )
    return KuboNode(
        repo=repo,
        api_url=f"http://127.0.0.1:{api}",
        gateway_url=f"http://127.0.0.1:{gateway}",
        swarm_port=swarm,
        binary=binary,
    )


@contextmanager
def kubo_node(root: Path) -> Iterator[KuboNode]:
    """A running daemon in `root`, stopped and removed afterwards."""
    node = init_node(root)
    node.start()
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
