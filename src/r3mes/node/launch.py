"""Build and run one role service from plain settings (what `r3mes <role> start` calls)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from r3mes.node.errors import ValidationError
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.node.runtime.service import RoleService, ServiceConfig, run_with_logging
from r3mes.node.tasks import WorkProfile
from r3mes.paths import Home
from r3mes.runtime.shutdown import Shutdown

logger = logging.getLogger(__name__)

PROFILE_FILE = "work.json"


@dataclass(frozen=True)
class RoleLaunch:
    """Flags common to every role, as parsed by the CLI."""

    role: str
    name: str
    home: Home
    chain_url: str
    key_name: str
    passphrase: str
    port: int = 0
    blocks: Path | None = None
    """Blockstore root; defaults to `$R3MES_HOME/blocks`."""
    ipfs_url: str | None = None
    """Kubo RPC API shared between machines (None: the local blockstore alone)."""
    gateway_url: str | None = None
    """IPFS HTTP gateway, a read fallback."""
    profile_path: Path | None = None
    """Work profile JSON; defaults to `$R3MES_HOME/work.json`, else built-in defaults."""
    idle_interval: float = 1.0
    start_delay_s: float = 0.0
    """TEST-ONLY FAULT INJECTION (R3MES_TEST_START_DELAY): see `ServiceConfig`."""


def load_profile(home: Home, path: Path | None) -> WorkProfile:
    """The network's work profile: the given file, the home's `work.json`, or defaults."""
    if path is not None:
        return WorkProfile.load(path)
    default = home.root / PROFILE_FILE
    return WorkProfile.load(default) if default.is_file() else WorkProfile()


def build_role(
    launch: RoleLaunch,
    *,
    cheat: str | None = None,
    stake: int = 0,
    max_prefetch: int = 2,
    retry: RetryPolicy | None = None,
    api_port: int = 0,
    heartbeat_s: float = 10.0,
    pause_after: str | None = None,
    shutdown: Shutdown | None = None,
) -> RoleService:
    """Load the key and assemble the role service (nothing runs yet)."""
    from r3mes.chain.errors import KeystoreError
    from r3mes.chain.keystore import Keystore

    try:
        key = Keystore(launch.home.keys).load(launch.key_name, passphrase=launch.passphrase)
    except KeystoreError as exc:
        raise ValidationError(
            f"cannot load key {launch.key_name!r} from {launch.home.keys}: {exc}; "
            "create it with `r3mes wallet create` and pass its passphrase (R3MES_PASSPHRASE)"
        ) from exc
    service = ServiceConfig(
        role=launch.role,
        name=launch.name,
        home=launch.home,
        port=launch.port,
        idle_interval=launch.idle_interval,
        start_delay_s=launch.start_delay_s,
    )
    blocks = launch.blocks or launch.home.blocks
    from r3mes.storage.tiered import open_store

    store = open_store(blocks, ipfs_url=launch.ipfs_url, gateway_url=launch.gateway_url)
    if launch.role == "serving":
        from r3mes.node.serving_node import ServingNode, ServingSettings

        return ServingNode(
            ServingSettings(
                service=service,
                chain_url=launch.chain_url,
                blocks=blocks,
                ipfs_url=launch.ipfs_url,
                gateway_url=launch.gateway_url,
                api_port=api_port,
                heartbeat_s=heartbeat_s,
            ),
            key=key,
            shutdown=shutdown,
        )
    profile = load_profile(launch.home, launch.profile_path)
    if launch.role == "miner":
        from r3mes.node.miner import Miner, MinerSettings

        policy = retry or RetryPolicy()
        return Miner(
            MinerSettings(
                service=service,
                chain_url=launch.chain_url,
                profile=profile,
                blocks=blocks,
                max_prefetch=max_prefetch,
                cheat=cheat,
                stake=stake,
                upload_retry=policy,
                submit_retry=policy,
                pause_after=pause_after,
            ),
            key=key,
            store=store,
            shutdown=shutdown,
        )
    if launch.role == "validator":
        from r3mes.node.validator import Validator, ValidatorSettings

        return Validator(
            ValidatorSettings(
                service=service, chain_url=launch.chain_url, profile=profile, blocks=blocks
            ),
            key=key,
            store=store,
            shutdown=shutdown,
        )
    if launch.role == "proposer":
        from r3mes.node.proposer import Proposer, ProposerSettings

        return Proposer(
            ProposerSettings(
                service=service, chain_url=launch.chain_url, profile=profile, blocks=blocks
            ),
            key=key,
            store=store,
            shutdown=shutdown,
        )
    raise ValidationError(f"unknown role {launch.role!r}")


def run_role(service: RoleService) -> int:
    """Run `service` in the foreground with JSON logs; returns the exit code."""
    import torch

    torch.set_num_threads(1)  # the reference executor class is single-threaded anyway
    return run_with_logging(service)
