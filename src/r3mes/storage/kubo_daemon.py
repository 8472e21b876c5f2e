"""Run real Kubo (`ipfs`) daemons: one per role group in `r3mes up --storage kubo`, in tests
and in benchmarks.

`init_daemon` makes a fresh repo (`ipfs init --profile=test`) with API, gateway and swarm on
loopback ports, no bootstrap peers, no DHT, no mDNS, no NAT port mapping and no AutoTLS: the
node talks only to the peers it is told to `connect` to. `KuboDaemon.start` waits until the
API answers; `stop` ends it with SIGTERM (SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from r3mes.storage.errors import StorageError

KUBO_VERSION = "0.42.0"
"""The pinned Kubo release (`scripts/kubo.sh` builds it)."""
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 20.0
CLI_TIMEOUT_S = 300.0


class KuboNotInstalled(StorageError):
    """No `ipfs` binary was found."""


def find_ipfs(extra_dirs: tuple[Path, ...] = ()) -> str:
    """The `ipfs` binary on PATH or in one of `extra_dirs` (e.g. Go's bin folder)."""
    found = shutil.which("ipfs")
    if found:
        return found
    for folder in extra_dirs:
        candidate = folder / "ipfs"
        if candidate.is_file():
            return str(candidate)
    raise KuboNotInstalled(
        "no `ipfs` (Kubo) binary on PATH; install it with: bash scripts/kubo.sh "
        f"(Kubo v{KUBO_VERSION} from the Go module proxy), then add $(go env GOPATH)/bin to PATH"
    )


@dataclass
class KuboDaemon:
    """One Kubo node: its repo, its loopback addresses, and its process once started."""

    repo: Path
    binary: str
    api_port: int
    gateway_port: int
    swarm_port: int
    peer_id: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def swarm_addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.swarm_port}/p2p/{self.peer_id}"

    def ipfs(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> str:
        """Run the `ipfs` CLI on this repo (through the daemon's API while it runs)."""
        try:
            done = subprocess.run(
                [self.binary, *args],
                env={"IPFS_PATH": str(self.repo), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise StorageError(f"ipfs {args[0] if args else ''} took over {timeout} s") from exc
        if done.returncode != 0:
            raise StorageError(f"ipfs {' '.join(args)} failed: {done.stderr.strip()[:500]}")
        return done.stdout

    def start(self, log_path: Path | None = None) -> None:
        """Start the daemon and wait until its API answers (its output goes to `log_path`)."""
        sink = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [self.binary, "daemon", "--enable-gc=false"],
                env={"IPFS_PATH": str(self.repo), "PATH": "/usr/bin:/bin"},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log_path is not None and not isinstance(sink, int):
                sink.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StorageError(
                    f"ipfs daemon in {self.repo} exited with {self.process.returncode}"
                    + (f"; see {log_path}" if log_path else "")
                )
            try:
                reply = httpx.post(f"{self.api_url}/api/v0/id", timeout=1.0)
                if reply.status_code == 200:
                    self.peer_id = str(reply.json()["ID"])
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        self.stop()
        raise StorageError(f"ipfs daemon in {self.repo} did not answer in {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def connect(self, other: KuboDaemon) -> None:
        """Swarm-connect to `other`; bitswap then exchanges blocks between the two."""
        self.ipfs("swarm", "connect", other.swarm_addr, timeout=30)

    def pins(self) -> set[str]:
        """Recursively pinned CIDs as `ipfs pin ls` prints them (CIDv1, base32)."""
        out = self.ipfs("pin", "ls", "--type=recursive", "--quiet", "--cid-base=base32")
        return set(out.split())


def init_daemon(
    repo: Path, *, binary: str, api_port: int, gateway_port: int, swarm_port: int
) -> KuboDaemon:
    """A new repo in `repo` (kept if it exists) configured for loopback-only use."""
    daemon = KuboDaemon(
        repo=repo,
        binary=binary,
        api_port=api_port,
        gateway_port=gateway_port,
        swarm_port=swarm_port,
    )
    if not (repo / "config").is_file():
        repo.mkdir(parents=True, exist_ok=True)
        daemon.ipfs("init", "--profile=test", timeout=60)
    settings = {
        "Addresses.API": json.dumps(f"/ip4/127.0.0.1/tcp/{api_port}"),
        "Addresses.Gateway": json.dumps(f"/ip4/127.0.0.1/tcp/{gateway_port}"),
        "Addresses.Swarm": json.dumps([f"/ip4/127.0.0.1/tcp/{swarm_port}"]),
        "Bootstrap": "[]",
        "Routing.Type": json.dumps("none"),
        "Discovery.MDNS.Enabled": "false",
        "Swarm.DisableNatPortMap": "true",
        "AutoTLS.Enabled": "false",
        "AutoConf.Enabled": "false",
    }
    for key, value in settings.items():
        daemon.ipfs("config", "--json", key, value, timeout=30)
    return daemon


__all__ = ["KUBO_VERSION", "KuboDaemon", "KuboNotInstalled", "find_ipfs", "init_daemon"]
