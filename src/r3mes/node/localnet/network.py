"""`r3mes up`: a whole network on one machine, each role a real subprocess.

Order: prepare the home (keys, artifacts, genesis), start the devnet ledger and wait for
it, then miners, validator, proposer and serving node, and wait until every one of them
says it is ready (`/health` "ok": registered, recovered, joined). Only then do rounds
count: `rounds` and `max_rounds` are measured from the ledger's round and adapter version
at that moment, however long start-up took. The caller watches snapshots
(`dashboard.collect`) until it is told to stop or `rounds` adapter versions were proposed;
then every child is stopped in reverse order with SIGTERM.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r3mes.node.errors import ServiceError, ValidationError
from r3mes.node.localnet.dashboard import Snapshot, collect
from r3mes.node.localnet.setup import NetworkSpec, ensure_keys, passphrase, prepare_genesis
from r3mes.node.runtime.supervisor import ProcessSpec, Supervisor
from r3mes.runtime.net import free_port
from r3mes.runtime.pidfile import pid_path, remove_pid_file, write_pid_file

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0
"""Longest wait for the devnet ledger to answer."""
READY_TIMEOUT_S = 600.0
"""Longest wait for every role process to say it is ready (slow disks, busy CPUs)."""
STATS_SETTLE_S = 15.0
"""Longest wait, once the target is reached, for the proposer's /stats to show it."""


@dataclass(frozen=True)
class UpOptions:
    """How `r3mes up` runs, beyond what the network is."""

    chain_port: int = 26657
    """Ledger RPC port (0 picks a free one)."""
    rounds: int | None = None
    """Stop after this many new adapter versions (None: run until stopped)."""
    max_rounds: int | None = None
    """Give up (exit 1) after the ledger advanced this many rounds without reaching
    `rounds` new versions."""
    poll_s: float = 1.0
    """Seconds between dashboard snapshots."""
    backend_port: int = 0
    """The backend's HTTP port (0 picks a free one; `r3mes up` defaults to 8080)."""
    kubo_binary: str | None = None
    """`ipfs` binary: run one Kubo node per role group (`--storage kubo`); None: no Kubo."""
    engine: str = "devnet"
    """The ledger: "devnet" (embedded, one node) or "cometbft" (validators under CometBFT)."""
    validators: int = 4
    """CometBFT validators (engine "cometbft")."""
    cometbft_binary: str | None = None
    """`cometbft` binary (engine "cometbft")."""

    def __post_init__(self) -> None:
        if not 0 <= self.chain_port <= 65535:
            raise ValidationError(f"--chain-port must be in [0, 65535], got {self.chain_port}")
        if self.rounds is not None and not 1 <= self.rounds <= 100_000:
            raise ValidationError(f"--rounds must be at least 1, got {self.rounds}")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise ValidationError(f"max_rounds must be at least 1, got {self.max_rounds}")
        if not 0 <= self.backend_port <= 65535:
            raise ValidationError(f"--backend-port must be in [0, 65535], got {self.backend_port}")
        if not 0 < self.poll_s <= 60:
            raise ValidationError(f"poll_s must be in (0, 60], got {self.poll_s}")
        if self.engine not in ("devnet", "cometbft"):
            raise ValidationError(f"--engine must be devnet or cometbft, got {self.engine!r}")
        if self.engine == "cometbft" and (self.cometbft_binary is None or self.validators < 1):
            raise ValidationError("--engine cometbft needs the cometbft binary and >= 1 validator")


@dataclass(frozen=True)
class UpResult:
    snapshot: Snapshot | None
    reached: bool
    """True when `rounds` proposals happened (or no target was set)."""
    exit_codes: dict[str, int]
    error: str | None = None
    """Why the network stopped by itself (the ledger or a role process died)."""
    stopped: bool = False
    """True when it was asked to stop (signal, `r3mes down`) before reaching the target."""

    @property
    def ok(self) -> bool:
        """A clean run: the target reached, or a requested stop, and nothing died."""
        return (self.reached or self.stopped) and self.error is None


def _cli(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "r3mes.cli.main", *args)


def _role_health(path: Path) -> str | None:
    """The `/health` status of the service behind `path` (None: not up yet)."""
    import httpx

    from r3mes.node.errors import ServiceError
    from r3mes.runtime.pidfile import read_pid_file

    try:
        info = read_pid_file(path)
    except ServiceError:
        return None  # being written
    if info is None or not info.alive():
        return None
    try:
        body = httpx.get(f"{info.url}/health", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) else None


def wait_until_ready(
    supervisor: Supervisor,
    pid_files: dict[str, Path],
    *,
    stop: threading.Event,
    timeout_s: float = READY_TIMEOUT_S,
    logs: Path,
) -> bool:
    """Block until every role answers `/health` with "ok"; False when `stop` was set first.

    Raises `ServiceError` when a role process (or the ledger) exits during start-up, or
    when start-up takes longer than `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    waiting = set(pid_files)
    while waiting:
        dead = dict(supervisor.exited())
        if dead:
            codes = ", ".join(f"{name} {code}" for name, code in sorted(dead.items()))
            raise ServiceError(f"exited during start-up ({codes}); see the logs in {logs}")
        waiting = {name for name in waiting if _role_health(pid_files[name]) != "ok"}
        if not waiting:
            return True
        if time.monotonic() > deadline:
            raise ServiceError(
                f"not ready within {timeout_s:.0f}s: {', '.join(sorted(waiting))}; "
                f"see the logs in {logs}"
            )
        if stop.wait(0.25):
            return False
    return True


@dataclass(frozen=True)
class LocalProcess:
    """One process `r3mes up` starts after the ledger, and how it says it is ready."""

    process: ProcessSpec
    pid_file: Path
    """The pid file it writes once listening; ready when that service's `/health` says
    "ok" (the `RoleService` convention; another service joins by following it)."""


def _role_args(spec: NetworkSpec, role: str, name: str) -> list[str]:
    """This role's own flags beyond the ones every role takes."""
    if role == "miner":
        args = ["--stake", "100", "--retries", "3"]
        if name.startswith("cheater-"):
            args += ["--cheat", spec.cheaters[int(name.removeprefix("cheater-")) - 1]]
        return args
    if role == "serving":
        return ["--heartbeat", "5"]
    if role == "validator":
        args = ["--stake", "100"]
        if int(name.removeprefix("validator-")) > spec.validators - spec.liars:
            args.append("--lie")  # FAULT INJECTION (NetworkSpec.liars)
        return args
    return []


def local_processes(
    spec: NetworkSpec,
    *,
    chain_url: str,
    backend_port: int = 0,
    ipfs_for: Callable[[str], str] | None = None,
) -> list[LocalProcess]:
    """Every process after the ledger, in start order (add one here to start it too)."""
    home = str(spec.home.root)
    env = {"R3MES_PASSPHRASE": passphrase(spec.home), "R3MES_HOME": home}
    out = []
    for role, name in spec.role_keys():
        command = "serving-node" if role == "serving" else role
        args = [command, "start", "--key", name, "--name", name, "--chain", chain_url]
        args += ["--home", home]
        ipfs_url = ipfs_for(role) if ipfs_for is not None else spec.ipfs_url
        if ipfs_url:
            args += ["--ipfs-url", ipfs_url]
        args += _role_args(spec, role, name)
        process = ProcessSpec(
            name=name, argv=_cli(*args), log_path=spec.home.logs / f"{name}.out", env=env
        )
        out.append(LocalProcess(process, pid_path(spec.home.run, role, name)))
    if spec.backend:
        out.append(backend_process(spec, chain_url=chain_url, port=backend_port, env=env))
    return out


def backend_process(
    spec: NetworkSpec, *, chain_url: str, port: int, env: dict[str, str]
) -> LocalProcess:
    """`r3mes backend start` for this network: SQLite in the home, a devnet faucet, the
    treasury and faucet keys unlocked with the network's passphrase."""
    from r3mes.chain.devnet import DEFAULT_CHAIN_ID

    secret = env["R3MES_PASSPHRASE"]
    backend_env = {
        **env,
        "R3MES_NETWORK_KIND": "devnet",
        "R3MES_TREASURY_PASSPHRASE": secret,
        "R3MES_FAUCET_PASSPHRASE": secret,
    }
    args = ["backend", "start", "--home", str(spec.home.root), "--port", str(port)]
    args += ["--chain", chain_url, "--chain-id", DEFAULT_CHAIN_ID, "--log-level", "warning"]
    process = ProcessSpec(
        name="backend",
        argv=_cli(*args),
        log_path=spec.home.logs / "backend.out",
        env=backend_env,
    )
    return LocalProcess(process, pid_path(spec.home.run, "backend", "backend"))


def devnet_process(spec: NetworkSpec, *, port: int) -> ProcessSpec:
    """The devnet ledger, started as `r3mes devnet start --detach` starts it."""
    from r3mes.chain.devnet import DevnetConfig, devnet_command

    config = DevnetConfig(host="127.0.0.1", port=port, block_interval_s=spec.block_interval)
    return ProcessSpec(
        name="devnet",
        argv=tuple(devnet_command(spec.home, config)),
        log_path=spec.home.logs / "devnet.out",
    )


def ledger_processes(spec: NetworkSpec, options: UpOptions, *, port: int) -> list[ProcessSpec]:
    """The devnet, or each CometBFT validator (ABCI app + node) and the gateway on `port`."""
    if options.engine == "devnet" or options.cometbft_binary is None:
        return [devnet_process(spec, port=port)]
    from r3mes.chain.cometbft import local_ledger
    from r3mes.chain.devnet import genesis_path
    from r3mes.chain.genesis import Genesis

    ledger = local_ledger(
        spec.home.root / "cometbft",
        Genesis.load(genesis_path(spec.home)),
        validators=options.validators,
        gateway_port=port,
        binary=options.cometbft_binary,
        block_interval_s=spec.block_interval,
    )
    return [ProcessSpec(name=p.name, argv=p.argv, log_path=p.log_path) for p in ledger]


def _validator_rpcs(spec: NetworkSpec, options: UpOptions) -> dict[str, str]:
    """Each CometBFT validator's RPC URL by node name (none on the devnet)."""
    if options.engine != "cometbft":
        return {}
    from r3mes.chain.testnet import load_testnet

    return {n.name: n.rpc_url for n in load_testnet(spec.home.root / "cometbft")}


def _stats_current(snapshot: Snapshot) -> bool:
    """Whether the proposer's published versions include the ledger's current one."""
    return any(v.get("version") == snapshot.adapter_version for v in snapshot.versions)


def _wait_for_chain(
    url: str, supervisor: Supervisor, timeout_s: float, stop: threading.Event
) -> None:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.errors import ClientError

    deadline = time.monotonic() + timeout_s
    with BlockchainClient(url, retries=0, timeout_s=2.0) as client:
        while time.monotonic() < deadline:
            dead = supervisor.exited()
            if dead:
                raise ServiceError(f"the devnet exited early ({dead}); see its log")
            try:
                client.status()
                return
            except ClientError:
                if stop.wait(0.2):
                    return
    raise ServiceError(f"the devnet did not answer on {url} within {timeout_s:.0f}s")


def run_network(
    spec: NetworkSpec,
    options: UpOptions,
    *,
    stop: threading.Event,
    on_snapshot: Callable[[Snapshot], None],
    on_ready: Callable[[list[str]], None] | None = None,
) -> UpResult:
    """Prepare, start, watch until `stop` is set or the target is reached, stop all.

    `on_ready` is called with the role process names once every one of them is ready.
    With `options.kubo_binary`, one Kubo node per role group runs for the network's life.
    """
    addresses = ensure_keys(spec)
    kubo = None
    if options.kubo_binary is not None:
        from r3mes.node.localnet.kubo import publish_local_pins, start_kubo_groups

        kubo = start_kubo_groups(spec.home, binary=options.kubo_binary)
        spec = dataclasses.replace(spec, ipfs_url=kubo.publisher_url)
    try:
        prepare_genesis(spec, addresses)
        if kubo is not None:
            count = publish_local_pins(spec.home.blocks, kubo.publisher_url)
            logger.info("published %d artifacts to the Kubo publisher node", count)
        return _run_started(
            spec,
            options,
            addresses,
            stop=stop,
            on_snapshot=on_snapshot,
            on_ready=on_ready,
            ipfs_for=None if kubo is None else kubo.url_for,
        )
    finally:
        if kubo is not None:
            kubo.stop()


def _run_started(
    spec: NetworkSpec,
    options: UpOptions,
    addresses: dict[str, str],
    *,
    stop: threading.Event,
    on_snapshot: Callable[[Snapshot], None],
    on_ready: Callable[[list[str]], None] | None,
    ipfs_for: Callable[[str], str] | None,
) -> UpResult:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.errors import ClientError

    port = options.chain_port or free_port()
    chain_url = f"http://127.0.0.1:{port}"
    up_pid = pid_path(spec.home.run, "up", "network")
    write_pid_file(up_pid, role="up", name="network", port=port)
    supervisor = Supervisor()
    snapshot: Snapshot | None = None
    reached = options.rounds is None
    settle_until: float | None = None
    reported: set[str] = set()
    first_version: int | None = None
    first_round: int | None = None
    roles: set[str] = set()
    error: str | None = None
    try:
        for ledger in ledger_processes(spec, options, port=port):
            supervisor.spawn(ledger)
        _wait_for_chain(chain_url, supervisor, STARTUP_TIMEOUT_S, stop)
        pid_files: dict[str, Path] = {}
        processes = local_processes(
            spec, chain_url=chain_url, backend_port=options.backend_port, ipfs_for=ipfs_for
        )
        for local in processes:
            if stop.is_set():
                break
            supervisor.spawn(local.process)
            roles.add(local.process.name)
            pid_files[local.process.name] = local.pid_file
        try:
            ready = not stop.is_set() and wait_until_ready(
                supervisor,
                pid_files,
                stop=stop,
                logs=spec.home.logs,
            )
        except ServiceError as exc:
            error = str(exc)
            logger.error("stopping: %s", error)
            ready = False
        if ready:
            logger.info("every role is ready: %s", ", ".join(sorted(roles)))
            if on_ready is not None:
                on_ready(sorted(roles))
        miners = {n: a for n, a in addresses.items() if n.startswith(("miner-", "cheater-"))}
        validator_rpcs = _validator_rpcs(spec, options)
        with BlockchainClient(chain_url, retries=1, timeout_s=5.0) as client:
            while ready and not stop.is_set():
                error = check_children(supervisor, roles, reported, logs=spec.home.logs)
                if error is not None:
                    logger.error("stopping: %s", error)
                    break
                try:
                    snapshot = collect(
                        client, home=spec.home, miners=miners, validator_rpcs=validator_rpcs
                    )
                except ClientError as exc:
                    logger.warning("ledger not answering: %s", exc)
                    stop.wait(options.poll_s)
                    continue
                on_snapshot(snapshot)
                if first_version is None:
                    first_version = snapshot.adapter_version
                progress = snapshot.adapter_version - first_version
                if options.rounds is not None and progress >= options.rounds:
                    reached = True
                    # the proposer publishes a version's held-out loss just after the ledger
                    # approves it: give its /stats a moment to catch up before stopping
                    settle_until = settle_until or time.monotonic() + STATS_SETTLE_S
                    if _stats_current(snapshot) or time.monotonic() > settle_until:
                        break
                    stop.wait(options.poll_s)
                    continue
                if first_round is None:
                    first_round = snapshot.current_round
                waited = snapshot.current_round - first_round
                if options.max_rounds is not None and waited > options.max_rounds:
                    logger.error(
                        "round %d reached without %s proposals",
                        snapshot.current_round,
                        options.rounds,
                    )
                    break
                stop.wait(options.poll_s)
    finally:
        codes = supervisor.stop_all(timeout=60.0)
        remove_pid_file(up_pid)
    return UpResult(
        snapshot=snapshot,
        reached=reached,
        exit_codes=codes,
        error=error,
        stopped=stop.is_set() and not reached,
    )


def check_children(
    supervisor: Supervisor, roles: set[str], reported: set[str], *, logs: Path
) -> str | None:
    """Log newly exited children; an error once the ledger or every role process is gone."""
    dead = dict(supervisor.exited())
    for name, code in dead.items():
        if name not in reported:
            reported.add(name)
            logger.error("%s exited (code %d); see %s", name, code, logs)
    if "devnet" in dead:
        return f"the devnet ledger exited (code {dead['devnet']}); see {logs / 'devnet.out'}"
    if "chain-gateway" in dead:
        return f"the ledger gateway exited (code {dead['chain-gateway']}); see the cometbft/ logs"
    if roles and roles <= dead.keys():
        codes = ", ".join(f"{name} {dead[name]}" for name in sorted(roles))
        return f"every role process exited ({codes}); see the logs in {logs}"
    return None
