"""`LedgerRole`: a role service that signs with one key, talks to the ledger and stores
content by CID (the miner, the validator and the proposer).

Each role is built from two things: its settings (a frozen `LedgerSettings` subclass with
the role's own knobs) and `RoleDeps`, the collaborators made outside it (the key; and, when
a caller already has them, a ledger client, a content store and the process's
`Shutdown`). The constructor here is the only place that turns those into a working role.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from r3mes.node.errors import ValidationError
from r3mes.node.runtime.service import RoleService, ServiceConfig
from r3mes.work.profile import WorkProfile

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.crypto import SigningKey
    from r3mes.node.artifacts import BlobStore
    from r3mes.runtime.shutdown import Shutdown


@dataclass(frozen=True)
class RoleDeps:
    """What a role is handed besides its settings."""

    key: SigningKey
    """The role's signing key (its ledger account)."""
    client: BlockchainClient | None = None
    """Ledger client; None: one is opened on the settings' `chain_url`."""
    store: BlobStore | None = None
    """Content store; None: the local blockstore at the settings' `blocks`."""
    shutdown: Shutdown | None = None
    """The process's stop request, installed before the role was built (None: a new one)."""


@dataclass(frozen=True)
class LedgerSettings:
    """What every ledger role needs; each role's settings add their own fields."""

    ROLE: ClassVar[str] = ""

    service: ServiceConfig
    """Role identity, home, HTTP port."""
    chain_url: str
    """Ledger RPC URL."""
    profile: WorkProfile
    """The network's shared training knobs."""
    blocks: Path
    """Root of the local blockstore that holds artifacts and updates."""

    def __post_init__(self) -> None:
        if self.service.role != self.ROLE:
            raise ValidationError(
                f"{type(self).__name__}.service.role must be {self.ROLE!r}, "
                f"got {self.service.role!r}"
            )


def check_gradient_checkpointing_setting(mode: str) -> None:
    """ValidationError unless `mode` is a `--gradient-checkpointing` value (auto, on, off)."""
    from r3mes.work.errors import TrainingError
    from r3mes.work.training import check_gradient_checkpointing

    try:
        check_gradient_checkpointing(mode)
    except TrainingError as exc:
        raise ValidationError(
            f"--gradient-checkpointing / R3MES_GRADIENT_CHECKPOINTING: {exc}"
        ) from exc


class LedgerRole(RoleService):
    """Key, ledger client and content store, shared by the roles that do the work."""

    def __init__(self, settings: LedgerSettings, deps: RoleDeps) -> None:
        from r3mes.chain.client import BlockchainClient
        from r3mes.storage.blockstore import Blockstore

        super().__init__(settings.service, shutdown=deps.shutdown)
        self.key = deps.key
        self.address = deps.key.address
        self.client = deps.client or BlockchainClient(settings.chain_url)
        self.store: BlobStore = deps.store or Blockstore(settings.blocks)
