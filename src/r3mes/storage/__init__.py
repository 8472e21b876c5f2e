"""r3mes.storage: IPFS-compatible content addressing, a local blockstore (the default) and a
Kubo client; every read is verified against its CID."""

from r3mes.storage.blockstore import Blockstore, GcResult, NotPinned
from r3mes.storage.content import ContentStore
from r3mes.storage.errors import (
    BlockNotFound,
    CidMismatch,
    InvalidCid,
    RemoteError,
    SizeLimitExceeded,
    StorageError,
    StorageWriteError,
)
from r3mes.storage.kubo import KuboClient, RetryPolicy
from r3mes.storage.multiformats import Cid, is_cid, parse_cid
from r3mes.storage.unixfs import compute_cid

__all__ = [
    "BlockNotFound",
    "Blockstore",
    "Cid",
    "CidMismatch",
    "ContentStore",
    "GcResult",
    "InvalidCid",
    "KuboClient",
    "NotPinned",
    "RemoteError",
    "RetryPolicy",
    "SizeLimitExceeded",
    "StorageError",
    "StorageWriteError",
    "compute_cid",
    "is_cid",
    "parse_cid",
]
