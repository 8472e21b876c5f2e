"""Build and run one role service from plain settings (what `r3mes <role> start` calls).

`RoleLaunch` holds the flags every role shares; `role_deps` loads the key and opens the
content store they all use. One small factory per role (`build_miner`, `build_validator`,
`build_proposer`, `build_serving_node`) takes just that role's own flags and assembles it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from r3mes.node.errors import ValidationError
from r3mes.node.ledger_role import RoleDeps
from r3mes.node.runtime.retry import RetryPolicy
from r3mes.node.runtime.service import RoleService, ServiceConfig, run_with_logging
from r3mes.paths import Home
from r3mes.work.profile import WorkProfile

if TYPE_CHECKING:
    from r3mes.node.miner.miner import Miner
    from r3mes.node.proposer import Proposer
    from r3mes.node.serving_node import ServingNode
    from r3mes.node.validator import Validator
    from r3mes.runtime.shutdown import Shutdown

logger = logging.getLogger(__name__)

PROFILE_FILE = "work.json"


@dataclass(frozen=True)
class RoleLaunch:
    """Flags common to every role, as parsed by the CLI."""

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

    @property
    def blocks_root(self) -> Path:
        return self.blocks or self.home.blocks

    def service(self, role: str) -> ServiceConfig:
        return ServiceConfig(
            role=role,
            name=self.name,
            home=self.home,
            port=self.port,
            idle_interval=self.idle_interval,
            start_delay_s=self.start_delay_s,
        )

    def profile(self) -> WorkProfile:
        return load_profile(self.home, self.profile_path)


def load_profile(home: Home, path: Path | None) -> WorkProfile:
    """The network's work profile: the given file, the home's `work.json`, or defaults."""
    if path is not None:
        return WorkProfile.load(path)
    default = home.root / PROFILE_FILE
    return WorkProfile.load(default) if default.is_file() else WorkProfile()


def role_deps(launch: RoleLaunch, *, shutdown: Shutdown | None = None) -> RoleDeps:
    """Load the key and open the content store (local blockstore, Kubo behind it)."""
    from r3mes.chain.errors import KeystoreError
    from r3mes.chain.keystore import Keystore
    from r3mes.storage.tiered import open_store

    try:
        key = Keystore(launch.home.keys).load(launch.key_name, passphrase=launch.passphrase)
    except KeystoreError as exc:
        raise ValidationError(
            f"cannot load key {launch.key_name!r} from {launch.home.keys}: {exc}; "
            "create it with `r3mes wallet create` and pass its passphrase (R3MES_PASSPHRASE)"
        ) from exc
    store = open_store(launch.blocks_root, ipfs_url=launch.ipfs_url, gateway_url=launch.gateway_url)
    return RoleDeps(key=key, store=store, shutdown=shutdown)


def build_miner(
    launch: RoleLaunch,
    *,
    cheat: str | None = None,
    stake: int = 0,
    max_prefetch: int = 2,
    retry: RetryPolicy | None = None,
    pause_after: str | None = None,
    shutdown: Shutdown | None = None,
    gradient_checkpointing: str = "auto",
) -> Miner:
    """A miner (nothing runs yet)."""
    from r3mes.node.miner.miner import Miner, MinerSettings

    policy = retry or RetryPolicy()
    # a miner waiting for a round to open looks often: in short rounds every block counts
    service = replace(launch.service("miner"), idle_interval=min(launch.idle_interval, 0.25))
    settings = MinerSettings(
        service=service,
        chain_url=launch.chain_url,
        profile=launch.profile(),
        blocks=launch.blocks_root,
        max_prefetch=max_prefetch,
        cheat=cheat,
        stake=stake,
        upload_retry=policy,
        submit_retry=policy,
        pause_after=pause_after,
        gradient_checkpointing=gradient_checkpointing,
    )
    return Miner(settings, role_deps(launch, shutdown=shutdown))


def build_validator(
    launch: RoleLaunch,
    *,
    device: str = "cpu",
    spot_ppm: int | None = None,
    lie: bool = False,
    stake: int = 0,
    shutdown: Shutdown | None = None,
    gradient_checkpointing: str = "auto",
) -> Validator:
    """A validator that re-executes on `device` (nothing runs yet); `spot_ppm` None follows
    the ledger's genesis spot-check rate."""
    from r3mes.node.validator import Validator, ValidatorSettings

    settings = ValidatorSettings(
        service=launch.service("validator"),
        chain_url=launch.chain_url,
        profile=launch.profile(),
        blocks=launch.blocks_root,
        device=device,
        spot_ppm=spot_ppm,
        lie=lie,
        stake=stake,
        gradient_checkpointing=gradient_checkpointing,
    )
    return Validator(settings, role_deps(launch, shutdown=shutdown))


def build_proposer(launch: RoleLaunch, *, shutdown: Shutdown | None = None) -> Proposer:
    """A proposer (nothing runs yet)."""
    from r3mes.node.proposer import Proposer, ProposerSettings

    settings = ProposerSettings(
        service=launch.service("proposer"),
        chain_url=launch.chain_url,
        profile=launch.profile(),
        blocks=launch.blocks_root,
    )
    return Proposer(settings, role_deps(launch, shutdown=shutdown))


def build_serving_node(
    launch: RoleLaunch,
    *,
    api_port: int = 0,
    heartbeat_s: float = 10.0,
    shutdown: Shutdown | None = None,
) -> ServingNode:
    """A serving node (nothing runs yet); it reads artifacts through the registry."""
    from r3mes.node.serving_node import ServingNode, ServingSettings

    settings = ServingSettings(
        service=launch.service("serving"),
        chain_url=launch.chain_url,
        blocks=launch.blocks_root,
        ipfs_url=launch.ipfs_url,
        gateway_url=launch.gateway_url,
        api_port=api_port,
        heartbeat_s=heartbeat_s,
    )
    return ServingNode(settings, role_deps(launch, shutdown=shutdown))


def run_role(service: RoleService) -> int:
    """Run `service` in the foreground with JSON logs; returns the exit code."""
    import torch

    torch.set_num_threads(1)  # the reference executor class is single-threaded anyway
    return run_with_logging(service)
