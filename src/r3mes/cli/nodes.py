"""`r3mes up | down | miner | validator | proposer | serving-node`: the network's roles.

Every role has `start` (runs in the foreground until SIGTERM/Ctrl-C), `stop` and `status`
(both work from another shell through the pid files under `$R3MES_HOME/run`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from r3mes.node.launch import RoleLaunch
    from r3mes.node.runtime.service import RoleService
    from r3mes.paths import Home
    from r3mes.runtime.shutdown import Shutdown

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="R3MES home folder (default: $R3MES_HOME or ~/.r3mes)."),
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Instance name; all instances when omitted.")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for a clean stop before SIGKILL.")
]

ChainOpt = Annotated[
    str,
    typer.Option("--chain", envvar="R3MES_CHAIN_RPC", help="Ledger RPC URL."),
]
KeyOpt = Annotated[str, typer.Option("--key", help="Name of the signing key in the keystore.")]
GradCheckpointOpt = Annotated[
    str,
    typer.Option(
        "--gradient-checkpointing",
        envvar="R3MES_GRADIENT_CHECKPOINTING",
        help="Recompute each layer in the backward when training: 'auto' (for models of a "
        "billion parameters or more: 3.9 instead of 5.9 GB a step at the 2B shape), 'on', "
        "'off'. Memory and time only; the update bytes are identical.",
    ),
]
PassOpt = Annotated[
    str,
    typer.Option(
        prompt=True, hide_input=True, envvar="R3MES_PASSPHRASE", help="Keystore passphrase."
    ),
]
InstanceOpt = Annotated[
    str | None, typer.Option("--name", help="Instance name (default: the key name).")
]
PortOpt = Annotated[
    int,
    typer.Option("--port", min=0, max=65535, help="Port of /health, /stats, /metrics (0: any)."),
]
BlocksOpt = Annotated[
    Path | None, typer.Option("--blocks", help="Blockstore folder (default: HOME/blocks).")
]
ProfileOpt = Annotated[
    Path | None,
    typer.Option("--work-profile", help="Network work profile JSON (default: HOME/work.json)."),
]
IpfsOpt = Annotated[
    str | None,
    typer.Option(
        "--ipfs-url",
        envvar="R3MES_IPFS_URL",
        help="Kubo RPC API shared by the network's machines, e.g. http://10.0.0.5:5001: "
        "what this role stores is added there too, and what it lacks is fetched from it.",
    ),
]
GatewayOpt = Annotated[
    str | None,
    typer.Option("--gateway", envvar="R3MES_IPFS_GATEWAY", help="IPFS HTTP gateway for reads."),
]
StartDelayOpt = Annotated[
    float,
    typer.Option(
        "--test-start-delay",
        envvar="R3MES_TEST_START_DELAY",
        hidden=True,
        min=0.0,
        max=3600.0,
        help="TEST-ONLY FAULT INJECTION: wait this many seconds before starting the role.",
    ),
]
DEFAULT_CHAIN = "http://127.0.0.1:26657"

ROLE_HELP = {
    "miner": "Miner: trains LoRA updates on its shard, stores them and submits them.",
    "validator": "Validator: re-executes submitted work and sends signed attestations.",
    "proposer": "Proposer: merges a round's verified updates into the next adapter version.",
    "serving": "Serving node: serves chat with the base model and approved adapters.",
}


def _home(home: Path | None) -> Home:
    from r3mes.paths import Home

    return Home.from_env(home, environ=os.environ)


def _stop(role: str | None, name: str | None, home: Path | None, timeout: float) -> None:
    from r3mes.node.runtime.control import stop_services

    console = Console()
    for service_id, outcome in stop_services(_home(home), role=role, name=name, timeout=timeout):
        style = {"stopped": "green", "killed": "yellow", "stale": "dim"}.get(outcome, "white")
        console.print(f"{service_id}: [{style}]{outcome}[/]")


def _status(role: str | None, home: Path | None) -> None:
    from r3mes.node.runtime.control import service_statuses

    statuses = service_statuses(_home(home), role=role)
    console = Console()
    if not statuses:
        console.print(f"no {role or 'service'} is running")
        return
    table = Table("service", "pid", "state", "url", "uptime")
    for status in statuses:
        info = status.info
        if info is None:
            table.add_row(status.service_id, "?", "[red]malformed pid file[/]", "", "")
            continue
        state = "[green]running[/]" if status.alive else "[dim]stale pid file[/]"
        if status.alive and status.health is None:
            state = "[yellow]not answering[/]"
        uptime = f"{status.health['uptime_s']:.0f}s" if status.health else ""
        table.add_row(status.service_id, str(info.pid), state, info.url, uptime)
    console.print(table)


def _role_app(role: str) -> typer.Typer:
    app = typer.Typer(help=ROLE_HELP[role], no_args_is_help=True)

    @app.command("stop")
    def stop(name: NameOpt = None, home: HomeOpt = None, timeout: TimeoutOpt = 60.0) -> None:
        """Stop running instances (SIGTERM; in-flight work finishes or rolls back)."""
        _stop(role, name, home, timeout)

    @app.command("status")
    def status(home: HomeOpt = None) -> None:
        """Show running instances, their pids, HTTP URLs and health."""
        _status(role, home)

    return app


miner_app = _role_app("miner")
validator_app = _role_app("validator")
proposer_app = _role_app("proposer")
serving_node_app = _role_app("serving")


def _launch(
    *,
    key: str,
    passphrase: str,
    chain: str,
    name: str | None,
    home: Path | None,
    port: int,
    blocks: Path | None,
    ipfs_url: str | None,
    gateway: str | None,
    profile: Path | None,
    start_delay: float = 0.0,
) -> RoleLaunch:
    from r3mes.node.launch import RoleLaunch

    return RoleLaunch(
        name=name or key,
        home=_home(home),
        chain_url=chain,
        key_name=key,
        passphrase=passphrase,
        port=port,
        blocks=blocks,
        ipfs_url=ipfs_url or None,
        gateway_url=gateway or None,
        profile_path=profile,
        start_delay_s=start_delay,
    )


def _shutdown() -> Shutdown:
    """SIGTERM and SIGINT handled from here on: a stop asked for while the role is still
    being built is carried into its run, which then exits 0."""
    from r3mes.runtime.shutdown import Shutdown

    shutdown = Shutdown()
    shutdown.install()
    return shutdown


def _run(service: RoleService) -> None:
    from r3mes.node.launch import run_role

    code = run_role(service)
    if code:
        raise typer.Exit(code)


@miner_app.command("start")
def miner_start(
    key: KeyOpt,
    passphrase: PassOpt,
    chain: ChainOpt = DEFAULT_CHAIN,
    name: InstanceOpt = None,
    home: HomeOpt = None,
    port: PortOpt = 0,
    blocks: BlocksOpt = None,
    ipfs_url: IpfsOpt = None,
    gateway: GatewayOpt = None,
    profile: ProfileOpt = None,
    max_prefetch: Annotated[
        int,
        typer.Option(
            envvar="R3MES_MAX_PREFETCH",
            min=1,
            max=64,
            help="Upcoming tasks whose artifacts are fetched and loaded ahead.",
        ),
    ] = 2,
    retries: Annotated[
        int, typer.Option(min=0, help="Retries of network steps (backoff; 0: try once).")
    ] = 3,
    stake: Annotated[int, typer.Option(min=0, help="Credits to lock when registering.")] = 0,
    cheat: Annotated[
        str | None,
        typer.Option(
            help="TEST/DEMO FAULT INJECTION ONLY: 'random' submits random updates, 'copy' "
            "resubmits another miner's update. Validators reject both and the ledger slashes."
        ),
    ] = None,
    test_pause_after: Annotated[
        str | None,
        typer.Option(
            envvar="R3MES_TEST_PAUSE_AFTER",
            hidden=True,
            help="TEST-ONLY FAULT INJECTION: IPFS_UPLOAD or BLOCKCHAIN_SUBMIT; hold each "
            "mining transaction after that step so a test can kill the miner there.",
        ),
    ] = None,
    test_start_delay: StartDelayOpt = 0.0,
    gradient_checkpointing: GradCheckpointOpt = "auto",
) -> None:
    """Mine: train this miner's task each round, store the update, prove work, submit."""
    shutdown = _shutdown()
    from r3mes.node.launch import build_miner
    from r3mes.node.runtime.retry import RetryPolicy

    launch = _launch(
        key=key,
        passphrase=passphrase,
        chain=chain,
        name=name,
        home=home,
        port=port,
        blocks=blocks,
        ipfs_url=ipfs_url,
        gateway=gateway,
        profile=profile,
        start_delay=test_start_delay,
    )
    policy = RetryPolicy(max_retries=retries, initial_delay=0.5, max_delay=10.0)
    _run(
        build_miner(
            launch,
            cheat=cheat,
            stake=stake,
            max_prefetch=max_prefetch,
            retry=policy,
            pause_after=test_pause_after or None,
            shutdown=shutdown,
            gradient_checkpointing=gradient_checkpointing,
        )
    )


@validator_app.command("start")
def validator_start(
    key: KeyOpt,
    passphrase: PassOpt,
    chain: ChainOpt = DEFAULT_CHAIN,
    name: InstanceOpt = None,
    home: HomeOpt = None,
    port: PortOpt = 0,
    blocks: BlocksOpt = None,
    ipfs_url: IpfsOpt = None,
    gateway: GatewayOpt = None,
    profile: ProfileOpt = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where submissions are re-executed ('cpu', 'cuda', 'cuda:1'); off the CPU, "
            "updates from another executor class are judged by distance."
        ),
    ] = "cpu",
    spot_ppm: Annotated[
        int | None,
        typer.Option(
            "--spot-ppm",
            min=1,
            max=1_000_000,
            help="Share of a traced submission's steps to re-execute, in ppm (default: the "
            "ledger's genesis spot_check_ppm; 1000000 = always re-execute in full).",
        ),
    ] = None,
    stake: Annotated[
        int, typer.Option(min=0, help="Credits to lock when registering (slashable).")
    ] = 0,
    lie: Annotated[
        bool,
        typer.Option(
            "--lie",
            help="TEST/DEMO FAULT INJECTION: attest the opposite of every verdict reached.",
        ),
    ] = False,
    test_start_delay: StartDelayOpt = 0.0,
    gradient_checkpointing: GradCheckpointOpt = "auto",
) -> None:
    """Validate: re-execute every pending submission and attest (never one's own)."""
    shutdown = _shutdown()
    from r3mes.node.launch import build_validator

    launch = _launch(
        key=key,
        passphrase=passphrase,
        chain=chain,
        name=name,
        home=home,
        port=port,
        blocks=blocks,
        ipfs_url=ipfs_url,
        gateway=gateway,
        profile=profile,
        start_delay=test_start_delay,
    )
    validator = build_validator(
        launch,
        device=device,
        spot_ppm=spot_ppm,
        lie=lie,
        stake=stake,
        shutdown=shutdown,
        gradient_checkpointing=gradient_checkpointing,
    )
    _run(validator)


@proposer_app.command("start")
def proposer_start(
    key: KeyOpt,
    passphrase: PassOpt,
    chain: ChainOpt = DEFAULT_CHAIN,
    name: InstanceOpt = None,
    home: HomeOpt = None,
    port: PortOpt = 0,
    blocks: BlocksOpt = None,
    ipfs_url: IpfsOpt = None,
    gateway: GatewayOpt = None,
    profile: ProfileOpt = None,
    test_start_delay: StartDelayOpt = 0.0,
) -> None:
    """Propose: merge each closed round's verified updates into the next adapter version."""
    shutdown = _shutdown()
    from r3mes.node.launch import build_proposer

    launch = _launch(
        key=key,
        passphrase=passphrase,
        chain=chain,
        name=name,
        home=home,
        port=port,
        blocks=blocks,
        ipfs_url=ipfs_url,
        gateway=gateway,
        profile=profile,
        start_delay=test_start_delay,
    )
    _run(build_proposer(launch, shutdown=shutdown))


@serving_node_app.command("start")
def serving_start(
    key: KeyOpt,
    passphrase: PassOpt,
    chain: ChainOpt = DEFAULT_CHAIN,
    name: InstanceOpt = None,
    home: HomeOpt = None,
    port: PortOpt = 0,
    blocks: BlocksOpt = None,
    ipfs_url: IpfsOpt = None,
    gateway: GatewayOpt = None,
    api_port: Annotated[
        int, typer.Option(min=0, max=65535, help="OpenAI-compatible API port (0: any).")
    ] = 0,
    heartbeat: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Seconds between heartbeats.")
    ] = 10.0,
    test_start_delay: StartDelayOpt = 0.0,
) -> None:
    """Serve chat with the approved base model and adapters; hot-swaps new versions."""
    shutdown = _shutdown()
    from r3mes.node.launch import build_serving_node

    launch = _launch(
        key=key,
        passphrase=passphrase,
        chain=chain,
        name=name,
        home=home,
        port=port,
        blocks=blocks,
        ipfs_url=ipfs_url,
        gateway=gateway,
        profile=None,
        start_delay=test_start_delay,
    )
    _run(build_serving_node(launch, api_port=api_port, heartbeat_s=heartbeat, shutdown=shutdown))


def down(home: HomeOpt = None, timeout: TimeoutOpt = 60.0) -> None:
    """Stop a network started with `r3mes up` (or every role service under --home)."""
    from r3mes.node.errors import ServiceError
    from r3mes.runtime.pidfile import pid_path, read_pid_file, stop_service

    paths = _home(home)
    up_pid = pid_path(paths.run, "up", "network")
    console = Console()
    info = read_pid_file(up_pid)
    if info is not None and info.alive():
        console.print(f"network (pid {info.pid}): {stop_service(up_pid, timeout=timeout)}")
        return
    try:
        _stop(None, None, home, timeout)
    except ServiceError:
        console.print("nothing is running")


def up(
    miners: Annotated[int, typer.Option(help="Honest miners to start.")] = 2,
    round_blocks: Annotated[int, typer.Option(help="Blocks per training round.")] = 20,
    difficulty: Annotated[int, typer.Option(help="Proof-of-work bits per submission.")] = 8,
    block_interval: Annotated[float, typer.Option(help="Seconds between blocks.")] = 1.0,
    rounds: Annotated[
        int | None, typer.Option(help="Stop after this many adapter versions (CI/tests).")
    ] = None,
    no_serving: Annotated[bool, typer.Option("--no-serving", help="No serving node.")] = False,
    no_backend: Annotated[
        bool, typer.Option("--no-backend", help="No backend (accounts, paid chat, dashboard).")
    ] = False,
    backend_port: Annotated[
        int, typer.Option(help="The backend's port: web dashboard and paid API (0: any free).")
    ] = 8080,
    headless: Annotated[
        bool, typer.Option(help="Plain log lines instead of the live view.")
    ] = False,
    base_model: Annotated[
        str, typer.Option(help="'shipped' (packaged model) or 'tiny' (fast, for tests).")
    ] = "shipped",
    cheat: Annotated[
        list[str] | None,
        typer.Option(
            metavar="random|copy",
            help="TEST/DEMO FAULT INJECTION: add a cheating miner; repeatable.",
        ),
    ] = None,
    chain_port: Annotated[int, typer.Option(help="Ledger RPC port (0: any free port).")] = 26657,
    ipfs_url: IpfsOpt = None,
    storage: Annotated[
        str,
        typer.Option(
            help="'local' (one shared blockstore) or 'kubo': a real Kubo node per role group "
            "(publisher, miners, validators), content moving between them over bitswap. "
            "Needs `ipfs` (bash scripts/kubo.sh).",
        ),
    ] = "local",
    engine: Annotated[
        str,
        typer.Option(
            help="'devnet' (embedded one-node ledger) or 'cometbft': --validators CometBFT "
            "validators, each with its ABCI app. Needs `cometbft` (bash scripts/cometbft.sh).",
        ),
    ] = "devnet",
    validators: Annotated[int, typer.Option(min=1, max=16, help="CometBFT validators.")] = 4,
    verifiers: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Validator role processes judging work; the ledger assigns each submission "
            "and each proposed adapter to all of them (n).",
        ),
    ] = 1,
    lying_verifiers: Annotated[
        int,
        typer.Option(
            min=0,
            max=16,
            help="TEST/DEMO FAULT INJECTION: how many of the --verifiers attest the opposite "
            "of what they find.",
        ),
    ] = 0,
    quorum: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Matching verdicts that settle a submission or approve an "
            "adapter version (k <= --verifiers).",
        ),
    ] = 1,
    home: HomeOpt = None,
) -> None:
    """Start a whole local network (Ctrl-C or `r3mes down` stops it).

    Devnet ledger, storage, miners, validator, proposer, serving node and the backend with
    its web dashboard, each a real process. Ctrl-C or `r3mes down` stops everything (exit 0).
    A home's network keeps the ledger options it was made with (--round-blocks,
    --difficulty, --verifiers, --quorum, --base-model, its miners and cheaters); other ones
    need a new --home."""
    from r3mes.runtime.shutdown import Shutdown

    shutdown = Shutdown(interrupt_on_second=False)  # a second Ctrl-C must not skip the stop
    shutdown.install()
    import sys

    from rich.live import Live

    from r3mes.node.localnet.dashboard import Snapshot, render
    from r3mes.node.localnet.network import UpOptions, run_network
    from r3mes.node.localnet.setup import NetworkSpec

    spec = NetworkSpec(
        home=_home(home),
        miners=miners,
        cheaters=tuple(cheat or ()),
        round_blocks=round_blocks,
        difficulty=difficulty,
        block_interval=block_interval,
        serving=not no_serving,
        backend=not no_backend,
        base_model=base_model,
        ipfs_url=ipfs_url or None,
        validators=verifiers,
        quorum=quorum,
        liars=lying_verifiers,
    )
    kubo_binary = None
    if storage not in ("local", "kubo"):
        raise typer.BadParameter("use 'local' or 'kubo'", param_hint="--storage")
    if storage == "kubo":
        if ipfs_url:
            raise typer.BadParameter("--storage kubo starts its own nodes; drop --ipfs-url")
        import os

        from r3mes.storage.kubo_daemon import find_ipfs

        gopath = Path(os.environ.get("GOPATH") or Path.home() / "go")
        kubo_binary = find_ipfs((gopath / "bin",))
    cometbft_binary = None
    if engine == "cometbft":
        import os

        from r3mes.chain.cometbft import find_cometbft

        gopath = Path(os.environ.get("GOPATH") or Path.home() / "go")
        cometbft_binary = find_cometbft((gopath / "bin",))
    options = UpOptions(
        engine=engine,
        validators=validators,
        cometbft_binary=cometbft_binary,
        kubo_binary=kubo_binary,
        chain_port=chain_port,
        backend_port=backend_port,
        rounds=rounds,
        max_rounds=None if rounds is None else rounds + 6,
    )
    stop = shutdown.event
    live_view = not headless and sys.stdout.isatty()
    console = Console() if live_view else Console(width=200)
    console.print(f"starting the network in {spec.home.root} (logs: {spec.home.logs})")
    last_line = ""
    printed_urls: set[str] = set()

    def show(snapshot: Snapshot) -> None:
        nonlocal last_line
        if live is not None:
            live.update(render(snapshot))
            return
        for name, url in snapshot.urls.items():
            if name not in printed_urls:
                console.print(f"{name}: {url}", highlight=False)
                printed_urls.add(name)
        line = snapshot.line()
        if line != last_line:
            console.print(line, highlight=False)
            last_line = line

    def ready(roles: list[str]) -> None:
        if live is None:
            console.print(f"network ready: {', '.join(roles)}", highlight=False)

    live: Live | None = Live(console=console, refresh_per_second=2) if live_view else None
    if live is not None:
        with live:
            result = run_network(spec, options, stop=stop, on_snapshot=show, on_ready=ready)
    else:
        result = run_network(spec, options, stop=stop, on_snapshot=show, on_ready=ready)
    if result.snapshot is not None:
        console.print(result.snapshot.line(), highlight=False)
    console.print(f"stopped: {result.exit_codes}")
    if result.error is not None:
        Console(stderr=True).print(f"[bold red]error:[/] {result.error}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount the role commands on the root app."""
    app.add_typer(miner_app, name="miner")
    app.add_typer(validator_app, name="validator")
    app.add_typer(proposer_app, name="proposer")
    app.add_typer(serving_node_app, name="serving-node")
    app.command("up")(up)
    app.command("down")(down)
