"""`LedgerRole`: a role service that signs with one key, talks to the ledger and stores
content by CID (the miner, the validator and the proposer)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from r3mes.node.runtime.service import RoleService, ServiceConfig

if TYPE_CHECKING:
    from r3mes.chain.client import BlockchainClient
    from r3mes.chain.crypto import SigningKey
    from r3mes.node.artifacts import BlobStore
    from r3mes.runtime.shutdown import Shutdown


class LedgerRole(RoleService):
    """Key, ledger client and content store, shared by the roles that do the work."""

    def __init__(
        self,
        service: ServiceConfig,
        *,
        chain_url: str,
        blocks: Path,
        key: SigningKey,
        client: BlockchainClient | None = None,
        store: BlobStore | None = None,
        shutdown: Shutdown | None = None,
    ) -> None:
        from r3mes.chain.client import BlockchainClient
        from r3mes.storage.blockstore import Blockstore

        super().__init__(service, shutdown=shutdown)
        self.key = key
        self.address = key.address
        self.client = client or BlockchainClient(chain_url)
        self.store: BlobStore = store or Blockstore(blocks)
