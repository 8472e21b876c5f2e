"""`TieredStore`: the local blockstore in front of a shared IPFS (Kubo) node.

A role on its own machine writes what it produces both locally and to the shared Kubo node,
so that every other machine can fetch it by CID; reads come from the local blockstore
first and fall back to Kubo (API, then gateway) when the local copy is missing or fails its
CID check, and what Kubo returns is kept locally (unpinned, so `gc` may reclaim it; a corrupt
local block is overwritten with the verified one). Every remote read is verified against its CID by
`KuboClient` before anyone sees the bytes; a remote that disagrees about a CID is an error,
never silently accepted. Without a remote, this is exactly the local blockstore.
"""

from __future__ import annotations

import logging
from pathlib import Path

from r3mes.storage.blockstore import Blockstore, NotPinned
from r3mes.storage.errors import BlockNotFound, CidMismatch, MalformedBlock, StorageError
from r3mes.storage.kubo import DEFAULT_MAX_SIZE, KuboClient
from r3mes.storage.multiformats import parse_cid
from r3mes.storage.unixfs import compute_cid

logger = logging.getLogger(__name__)


class TieredStore:
    """Local blockstore first; a Kubo node (optional) for sharing between machines."""

    def __init__(self, local: Blockstore, remote: KuboClient | None = None) -> None:
        self.local = local
        self.remote = remote

    def add_bytes(self, data: bytes, *, cid_version: int = 1, pin: bool = True) -> str:
        """Store locally and, when a remote is set, on the remote too (same CID or error).

        If the remote fails, a local pin this call added is taken back, so a failed add
        leaves nothing pinned that was not pinned before.
        """
        if self.remote is None:
            return self.local.add_bytes(data, cid_version=cid_version, pin=pin)
        cid = compute_cid(data, cid_version=cid_version)
        pinned_before = self.local.is_pinned(cid)
        self.local.add_bytes(data, cid_version=cid_version, pin=pin)
        try:
            remote_cid = self.remote.add_bytes(data, cid_version=cid_version, pin=pin)
            if remote_cid != cid:
                raise CidMismatch(cid, "kubo add", f"the IPFS node answered {remote_cid}")
        except StorageError:
            if pin and not pinned_before:
                self.local.unpin(cid)
            raise
        return cid

    def get_bytes(self, cid: str, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
        """Verified bytes of `cid`: the local blockstore, else (missing or corrupt there) the
        remote, whose verified bytes are then stored locally, repairing a corrupt copy."""
        try:
            return self.local.get_bytes(cid, max_size=max_size)
        except (BlockNotFound, CidMismatch, MalformedBlock) as exc:
            if self.remote is None:
                raise
            if not isinstance(exc, BlockNotFound):
                logger.warning("local copy of %s is damaged (%s); reading the remote", cid, exc)
        data = self.remote.get_bytes(cid, max_size=max_size)
        try:
            cached = self.local.add_bytes(data, cid_version=parse_cid(cid).version, pin=False)
        except StorageError as exc:  # a full or read-only disk must not hide good bytes
            logger.warning("could not cache %s locally: %s", cid, exc)
        else:
            if cached != cid:  # another DAG layout of the same bytes: kept, under its own CID
                logger.debug("%s cached locally as %s", cid, cached)
        return data

    def has(self, cid: str) -> bool:
        """Whether the whole DAG of `cid` is in the local blockstore."""
        return self.local.has(cid)

    def pin(self, cid: str) -> None:
        """Pin locally (fetching first if needed) and on the remote."""
        if not self.local.has(cid):
            self.get_bytes(cid)
        self.local.pin(cid)
        if self.remote is not None:
            self.remote.pin(cid)

    def unpin(self, cid: str) -> None:
        """Unpin locally and on the remote; `NotPinned` only when neither held a pin."""
        local_pinned = True
        try:
            self.local.unpin(cid)
        except NotPinned:
            local_pinned = False
        if self.remote is not None:
            try:
                self.remote.unpin(cid)
            except StorageError as exc:
                logger.warning("remote unpin of %s failed: %s", cid, exc)
        elif not local_pinned:
            raise NotPinned(cid)

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


def open_store(
    blocks: Path,
    *,
    ipfs_url: str | None = None,
    gateway_url: str | None = None,
    timeout: float = 30.0,
) -> TieredStore:
    """The store a role uses: `blocks` locally, plus Kubo at `ipfs_url` (and/or a gateway)."""
    remote: KuboClient | None = None
    if ipfs_url:
        remote = KuboClient(ipfs_url, gateway_url=gateway_url, timeout=timeout)
    elif gateway_url:
        remote = KuboClient.gateway(gateway_url, timeout=timeout)
    return TieredStore(Blockstore(blocks), remote)
