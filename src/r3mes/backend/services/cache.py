"""The explorer's answer cache: Redis when configured, in process otherwise.

Every cached answer belongs to a *generation*, the indexed height it was computed at. The
indexer bumps the generation after each block commits, so a new block invalidates every
answer at once without deleting keys (old generations expire by TTL in Redis and are
dropped wholesale in process). ETags are the SHA-256 of the answer bytes, so an unchanged
answer keeps its ETag across blocks.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

MAX_LOCAL_ENTRIES = 4096


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class ExplorerCache:
    """get/put answer bytes by key within the current generation (see the module docstring)."""

    def __init__(self, *, redis: Redis | None, prefix: str, ttl_s: float) -> None:
        self.redis = redis
        self.prefix = f"{prefix}explorer:"
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.generation = 0
        self._local: OrderedDict[str, bytes] = OrderedDict()

    async def current_generation(self) -> int:
        """The newest generation (shared through Redis by every backend process)."""
        if self.redis is None:
            return self.generation
        try:
            raw = await self.redis.get(self.prefix + "generation")
        except Exception as exc:  # the cache is an optimisation; answer uncached instead
            log.warning("explorer cache: Redis unavailable (%s)", type(exc).__name__)
            return -1
        return int(raw) if raw is not None else 0

    async def get(self, key: str, *, generation: int) -> bytes | None:
        """The answer stored for `key` in `generation` (from `current_generation`), if any."""
        if generation < 0:
            return None
        full = f"{generation}:{key}"
        if self.redis is None:
            found = self._local.get(full)
            if found is not None:
                self._local.move_to_end(full)
            return found
        try:
            value = await self.redis.get(self.prefix + full)
        except Exception:
            return None
        return value.encode() if isinstance(value, str) else value

    async def put(self, key: str, body: bytes, *, generation: int) -> None:
        """Store `body`, computed while the index stood at `generation`."""
        full = f"{generation}:{key}"
        if self.redis is None:
            if generation != self.generation:
                return
            self._local[full] = body
            while len(self._local) > MAX_LOCAL_ENTRIES:
                self._local.popitem(last=False)
            return
        try:
            await self.redis.set(self.prefix + full, body, px=self.ttl_ms)
        except Exception as exc:
            log.warning("explorer cache: cannot store (%s)", type(exc).__name__)

    async def invalidate(self, generation: int) -> None:
        """A new block is indexed: answers of older generations no longer count."""
        self.generation = generation
        self._local.clear()
        if self.redis is not None:
            try:
                await self.redis.set(self.prefix + "generation", generation)
            except Exception as exc:
                log.warning("explorer cache: cannot publish generation (%s)", type(exc).__name__)
