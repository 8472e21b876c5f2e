"""Incremental check that a byte stream is the file a CID names (for whole-file sources).

A Kubo `cat` or a gateway returns file bytes, not blocks; we rebuild the DAG as the bytes
arrive, with the parameters the CID implies (v0: dag-pb leaves; v1: raw leaves; Kubo's default
chunker and layout), and compare roots at the end. Callers keep the bytes away from readers
(in memory or a temp file) until `finish()` has passed.
"""

from __future__ import annotations

from r3mes.storage.errors import CidMismatch, SizeLimitExceeded
from r3mes.storage.multiformats import Cid
from r3mes.storage.unixfs import DagBuilder, DagParams, Rechunker


class StreamVerifier:
    """Feed pieces in order, then `finish()`; raises CidMismatch if the bytes are wrong."""

    def __init__(self, cid: Cid, *, source: str, max_size: int | None = None) -> None:
        self.cid = cid
        self.source = source
        self.max_size = max_size
        self._builder = DagBuilder(params=DagParams(cid_version=cid.version))
        self._chunks = Rechunker(self._builder.params.chunk_size)
        self.size = 0

    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.max_size is not None and self.size > self.max_size:
            raise SizeLimitExceeded(str(self.cid), self.size, self.max_size)
        for chunk in self._chunks.feed(piece):
            self._builder.add_chunk(chunk)

    def finish(self) -> None:
        for chunk in self._chunks.flush():
            self._builder.add_chunk(chunk)
        root, _ = self._builder.finish()
        if root != self.cid:
            raise CidMismatch(str(self.cid), self.source, f"bytes hash to {root}")
