"""`ContentStore`: what the miner, validator and registry need from any content store.

Implemented by the local `Blockstore` and by `KuboClient`, so callers can use either.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ContentStore(Protocol):
    """Add, read and pin content by CID; every read is verified against its CID."""

    def add_bytes(self, data: bytes, *, cid_version: int = 1, pin: bool = True) -> str:
        """Store `data`; return the CID `ipfs add` would print."""
        ...

    def get_bytes(self, cid: str, *, max_size: int = ...) -> bytes:
        """Return the verified bytes named by `cid`, at most `max_size` of them."""
        ...

    def pin(self, cid: str) -> None:
        """Keep `cid` (recursively) from garbage collection."""
        ...

    def unpin(self, cid: str) -> None:
        """Allow `cid` to be garbage collected."""
        ...
