"""Errors raised by `r3mes.storage`; each says what happened and what to do."""

from __future__ import annotations

from r3mes.errors import R3mesError


class StorageError(R3mesError):
    """Base class of every storage error."""


class InvalidCid(StorageError):
    """A string or byte sequence is not a CID this package understands."""

    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(
            f"invalid CID {value[:80]!r}: {reason}; pass a CIDv0 ('Qm...') or base32 CIDv1 ('b...')"
        )


class CidMismatch(StorageError):
    """Bytes from a source do not hash to the CID they were requested by."""

    def __init__(self, cid: str, source: str, detail: str = "") -> None:
        self.cid = cid
        self.source = source
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"content from {source} does not match CID {cid}{extra}; the bytes were discarded, "
            "try another source"
        )


class BlockNotFound(StorageError):
    """A block (or a block of a DAG) is not available from a source."""

    def __init__(self, cid: str, source: str) -> None:
        self.cid = cid
        self.source = source
        super().__init__(f"block {cid} not found in {source}; add or fetch the content first")


class SizeLimitExceeded(StorageError):
    """Content is larger than the caller allowed."""

    def __init__(self, cid: str, size: int, limit: int) -> None:
        self.cid = cid
        self.size = size
        self.limit = limit
        super().__init__(
            f"content {cid} is at least {size} bytes, over the limit of {limit}; "
            "raise max_size if this object is expected to be that large"
        )


class MalformedBlock(StorageError):
    """A block's bytes are not valid dag-pb / UnixFS."""

    def __init__(self, cid: str, reason: str) -> None:
        self.cid = cid
        self.reason = reason
        super().__init__(f"block {cid} is malformed: {reason}")


class StorageWriteError(StorageError):
    """Writing to local storage failed (full disk, read-only folder); nothing was changed."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"could not write {path}: {reason}; free disk space or fix permissions, "
            "stored content is unchanged"
        )


class RemoteError(StorageError):
    """A remote IPFS node or gateway failed or answered with an error."""

    def __init__(self, url: str, reason: str, *, status: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        """The HTTP status of a final error answer; None for transport failures."""
        if status is None:
            hint = "; check that the node is reachable"
        elif status >= 400:
            hint = "; the node answered but refused the request"
        else:
            hint = ""
        super().__init__(f"request to {url} failed: {reason}{hint}")
