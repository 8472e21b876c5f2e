"""The embedded single-node devnet: init a home, serve RPC + REST, produce blocks.

Library API (used by `r3mes devnet` and by `r3mes up`):

    genesis = devnet_genesis(accounts={addr: 10_000}, artifacts=[model_spec, dataset_spec])
    init_devnet(home, genesis)
    DevnetNode(home, DevnetConfig(port=26657)).serve()          # blocking, foreground
    node = DevnetNode(home, config); node.start(); ...; node.stop()  # in a background thread

Run as a process: `python -m r3mes.chain.devnet --home DIR --port N`.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from r3mes.chain.engine import DevnetEngine, EngineConfig
from r3mes.chain.errors import ChainError, GenesisError
from r3mes.chain.genesis import Genesis, GenesisAccount, Params
from r3mes.chain.identity import load_or_create_identity
from r3mes.chain.msgs import ArtifactSpec
from r3mes.chain.store import BlockStore
from r3mes.paths import Home
from r3mes.runtime.errors import ServiceError
from r3mes.runtime.pidfile import read_pid_file, remove_pid_file, stop_service, write_pid_file

log = logging.getLogger(__name__)
DEFAULT_CHAIN_ID = "r3mes-devnet-1"
DEFAULT_PORT = 26657
MIN_BLOCK_INTERVAL_S = 0.01
MAX_BLOCK_INTERVAL_S = 3600.0


def genesis_path(home: Home) -> Path:
    return home.chain / "genesis.json"


def db_path(home: Home) -> Path:
    return home.chain / "chain.db"


def pid_path(home: Home) -> Path:
    return home.run / "devnet.json"


def devnet_genesis(
    *,
    chain_id: str = DEFAULT_CHAIN_ID,
    accounts: Mapping[str, int] | None = None,
    artifacts: Iterable[ArtifactSpec] = (),
    genesis_time_ms: int | None = None,
    **params: Any,
) -> Genesis:
    """A devnet genesis: faucet on, PoW difficulty 8, quorum 1 of 1, rounds of 30 blocks."""
    settings: dict[str, Any] = {
        "devnet": True,
        "pow_difficulty": 8,
        "attestation_quorum": 1,
        "validators_per_submission": 1,
        "round_length": 30,
    }
    settings.update(params)
    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=int(time.time() * 1000) if genesis_time_ms is None else genesis_time_ms,
        params=Params(**settings),
        accounts=tuple(GenesisAccount(a, b) for a, b in sorted((accounts or {}).items())),
        artifacts=tuple(artifacts),
    )


def init_devnet(home: Home, genesis: Genesis, *, overwrite: bool = False) -> Path:
    """Write `genesis` under home/chain and create the store; returns the genesis path.

    Re-running with the same genesis is a no-op; a different one needs `overwrite=True`,
    which deletes the existing chain data.
    """
    path = genesis_path(home)
    if path.exists():
        same = Genesis.load(path) == genesis
        if same and db_path(home).exists():
            return path
        if not same and not overwrite:
            raise GenesisError(
                f"{path} already holds a different genesis; pass --overwrite to reset the chain"
            )
        shutil.rmtree(home.chain)
    home.chain.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(genesis.to_json())
    os.replace(tmp, path)
    store = BlockStore(db_path(home))
    try:
        store.init_genesis(genesis)
    finally:
        store.close()
    log.info("initialised devnet %s in %s", genesis.chain_id, home.chain)
    return path


def _lock_home(home: Home) -> IO[bytes]:
    """Hold an exclusive lock on home/chain/LOCK: one node per chain directory."""
    handle = open(home.chain / "LOCK", "ab")  # held open for the node's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise ChainError(
            f"another devnet node is already using {home.chain}; stop it with `r3mes devnet stop`"
        ) from exc
    return handle


@dataclass(frozen=True)
class DevnetConfig:
    host: str = "127.0.0.1"
    """Interface to listen on; loopback by default (the devnet has no auth)."""
    port: int = DEFAULT_PORT
    block_interval_s: float = 1.0
    """Seconds between blocks, empty or not: a finite number in [0.01, 3600]."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ChainError("host must be an interface address such as 127.0.0.1")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ChainError(f"port must be an integer, not {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ChainError("port must be in [0, 65535]")
        interval = self.block_interval_s
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or not MIN_BLOCK_INTERVAL_S <= interval <= MAX_BLOCK_INTERVAL_S
        ):
            raise ChainError(
                f"block interval must be a number of seconds in "
                f"[{MIN_BLOCK_INTERVAL_S}, {MAX_BLOCK_INTERVAL_S}], not {interval!r}"
            )


class DevnetNode:
    """One engine + one HTTP server over the chain in `home`."""

    def __init__(self, home: Home, config: DevnetConfig | None = None) -> None:
        self.home = home
        self.config = config or DevnetConfig()
        if not genesis_path(home).exists():
            raise ChainError(f"no devnet in {home.root}; run `r3mes devnet init` first")
        self._lock_file = _lock_home(home)
        self.identity = load_or_create_identity(home.chain / "node_key.json")
        self.store = BlockStore(db_path(home))
        engine_config = EngineConfig(
            block_interval_s=self.config.block_interval_s,
            proposer=self.identity.validator_address,
        )
        self.engine = DevnetEngine(self.store, engine_config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._bound_port = 0
        self.block_error: Exception | None = None
        """What stopped block production, if a bug did (the node then stops too)."""

    @property
    def url(self) -> str:
        """The RPC URL; with port 0, the port actually bound once started."""
        return f"http://{self.config.host}:{self._bound_port or self.config.port}"

    def _make_server(self) -> Any:
        import uvicorn

        from r3mes.chain.rpc import create_app

        config = uvicorn.Config(
            create_app(self.engine, self.identity),
            host=self.config.host,
            port=self.config.port,
            log_level="warning",
            timeout_keep_alive=5,
        )
        return uvicorn.Server(config)

    def _produce_blocks(self) -> None:
        try:
            self.engine.run(self._stop)
        except Exception as exc:  # a bug in the state machine: stop the node, say why
            self.block_error = exc
            log.exception("block production stopped at height %d", self.engine.state.height)

    def _start_blocks(self) -> None:
        thread = threading.Thread(target=self._produce_blocks, name="r3mes-blocks")
        thread.daemon = True
        thread.start()
        self._threads.append(thread)

    def serve(self) -> None:
        """Run in the foreground until SIGINT, SIGTERM or SIGHUP, then stop cleanly and return.

        uvicorn would capture both signals and re-raise them once it has shut down, which
        kills the process (-15) before the store is closed. So the server runs from a
        thread (where uvicorn leaves signals alone) and the main thread owns the handlers:
        a signal only asks for a stop; the block in progress is finished, the store closed
        and the pid file removed before `serve` returns.
        """
        requested: list[int] = []

        def request_stop(signum: int, _frame: object) -> None:
            requested.append(signum)

        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # a closed terminal: SIGHUP
        previous = {sig: signal.signal(sig, request_stop) for sig in handled}
        pid_file = pid_path(self.home)
        try:
            self.start()
            write_pid_file(  # the liveness rules every R3MES service's pid file follows
                pid_file,
                role="devnet",
                name="devnet",
                host=self.config.host,
                port=self._bound_port or self.config.port,
                stop_hint="r3mes devnet stop",
            )
            log.info("devnet %s serving on %s", self.engine.state.chain_id, self.url)
            while not requested and self._server_alive() and self.block_error is None:
                time.sleep(0.1)  # a signal interrupts the sleep; its handler only records it
            if self.block_error is not None:
                raise ChainError(
                    f"block production failed ({type(self.block_error).__name__}: "
                    f"{self.block_error}); nothing past height {self.engine.state.height} "
                    "was committed; the log above holds the traceback"
                ) from self.block_error
            if not requested:
                raise ChainError(f"the devnet RPC server on {self.url} stopped unexpectedly")
            log.info("signal %d received; stopping the devnet", requested[0])
        finally:
            self.stop()
            remove_pid_file(pid_file)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("devnet stopped at height %d", self.engine.state.height)

    def start(self, timeout_s: float = 10.0) -> None:
        """Serve from background threads (for in-process use); returns once listening."""
        self._server = self._make_server()
        thread = threading.Thread(target=self._server.run, name="r3mes-rpc", daemon=True)
        thread.start()
        self._threads.append(thread)
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise ChainError(f"devnet RPC did not start on {self.url}")
            time.sleep(0.02)
        servers = getattr(self._server, "servers", None) or []
        sockets = servers[0].sockets if servers else []
        if sockets:
            self._bound_port = int(sockets[0].getsockname()[1])
        self._start_blocks()

    def _server_alive(self) -> bool:
        return any(t.name == "r3mes-rpc" and t.is_alive() for t in self._threads)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._shutdown()

    def _shutdown(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.store.close()
        self._lock_file.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the R3MES devnet node.")
    parser.add_argument("--home", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--block-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = DevnetConfig(host=args.host, port=args.port, block_interval_s=args.block_interval)
        DevnetNode(Home(root=Path(args.home).expanduser().resolve()), config).serve()
    except ChainError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()


def running_devnet(home: Home) -> dict[str, Any] | None:
    """{"pid", "url"} of the devnet process serving `home`, or None if none is alive."""
    try:
        info = read_pid_file(pid_path(home))
    except ServiceError:
        return None  # malformed (an older format, a partial write): not trusted
    if info is None or not info.alive():
        return None
    return {"pid": info.pid, "url": info.url}


def devnet_command(home: Home, config: DevnetConfig) -> list[str]:
    """The command line of a devnet process for `home` (`r3mes devnet start --detach` and
    `r3mes up` both start it this way)."""
    return [
        sys.executable,
        "-m",
        "r3mes.chain.devnet",
        "--home",
        str(home.root),
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--block-interval",
        str(config.block_interval_s),
    ]


def spawn_devnet(home: Home, config: DevnetConfig) -> subprocess.Popen[bytes]:
    """Start `python -m r3mes.chain.devnet` detached, logging to home/logs/devnet.log."""
    home.logs.mkdir(parents=True, exist_ok=True)
    with open(home.logs / "devnet.log", "ab") as logfile:
        return subprocess.Popen(
            devnet_command(home, config), stdout=logfile, stderr=logfile, start_new_session=True
        )


def stop_devnet(home: Home, timeout_s: float = 30.0) -> int | None:
    """SIGTERM the devnet serving `home` and wait for it; returns its pid (None if none).

    The node finishes its current block, closes the store and removes its pid file on
    SIGTERM; raises ChainError if it is still running after `timeout_s`.
    """
    path = pid_path(home)
    info = running_devnet(home)
    if info is None:
        return None
    pid = int(info["pid"])
    try:
        stop_service(path, timeout=timeout_s, kill_after=False)
    except ServiceError as exc:
        raise ChainError(
            f"devnet (pid {pid}) did not stop within {timeout_s:g} s; "
            f"see {home.logs / 'devnet.log'}, or end it with `kill -KILL {pid}`"
        ) from exc
    return pid
