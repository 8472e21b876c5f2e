"""Rate limits: token buckets for requests/min and tokens/min, per API key and per client IP.

A check takes one request and its estimated tokens (prompt bound + max_tokens) from every
bucket that applies, all or nothing: if any bucket is short, nothing is taken and the caller
learns how long to wait. After the request, tokens it did not use go back (`refund`).

Two stores with one behaviour: `MemoryLimiter` (one process) and `RedisLimiter` (one Lua
script per check, so several backend processes share the buckets atomically; the clock is
Redis's own `TIME`, so their clocks need not agree).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

WINDOW_S = 60.0
"""Bucket sizes are per minute; a bucket refills from empty to full in this long."""


@dataclass(frozen=True)
class Bucket:
    """One bucket to draw from: its name, its size and what this request takes from it."""

    name: str
    capacity: int
    cost: int

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.cost < 0:
            raise ValueError(f"bucket {self.name}: capacity must be >= 1 and cost >= 0")


@dataclass(frozen=True)
class Level:
    """A bucket after the check: its size, what is left and seconds until it is full again."""

    capacity: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float
    """Seconds until every short bucket holds enough (0 when allowed)."""
    levels: tuple[Level, ...]
    """One per bucket, in the order asked."""
    short: str | None = None
    """The first bucket that was short, when refused."""


class Limiter(Protocol):
    async def take(self, buckets: list[Bucket]) -> Decision: ...

    async def refund(self, buckets: list[Bucket]) -> None: ...


def _rate(capacity: int) -> float:
    return capacity / WINDOW_S


def _decide(buckets: list[Bucket], levels: list[float]) -> tuple[bool, float, int]:
    """(allowed, retry_after_s, index of the first short bucket or -1)."""
    wait = 0.0
    first_short = -1
    for i, (bucket, level) in enumerate(zip(buckets, levels, strict=True)):
        if level + 1e-9 < bucket.cost:
            if first_short < 0:
                first_short = i
            if bucket.cost > bucket.capacity:
                wait = math.inf
            else:
                wait = max(wait, (bucket.cost - level) / _rate(bucket.capacity))
    return first_short < 0, wait, first_short


def _level(bucket: Bucket, level: float) -> Level:
    return Level(
        capacity=bucket.capacity,
        remaining=max(0, math.floor(level)),
        reset_s=max(0.0, (bucket.capacity - level) / _rate(bucket.capacity)),
    )


class MemoryLimiter:
    """Buckets in this process (no awaits inside a check, so each check is atomic)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._state: dict[str, tuple[float, float]] = {}
        self._clock = clock

    def _refilled(self, bucket: Bucket, now: float) -> float:
        level, at = self._state.get(bucket.name, (float(bucket.capacity), now))
        return min(float(bucket.capacity), level + (now - at) * _rate(bucket.capacity))

    async def take(self, buckets: list[Bucket]) -> Decision:
        now = self._clock()
        levels = [self._refilled(b, now) for b in buckets]
        allowed, wait, short = _decide(buckets, levels)
        if allowed:
            levels = [level - b.cost for b, level in zip(buckets, levels, strict=True)]
            for b, level in zip(buckets, levels, strict=True):
                self._state[b.name] = (level, now)
            if len(self._state) > 100_000:
                self._forget_full(now)
        return Decision(
            allowed=allowed,
            retry_after_s=0.0 if allowed else wait,
            levels=tuple(_level(b, lv) for b, lv in zip(buckets, levels, strict=True)),
            short=None if allowed else buckets[short].name,
        )

    async def refund(self, buckets: list[Bucket]) -> None:
        now = self._clock()
        for b in buckets:
            if b.cost:
                level = self._refilled(b, now)
                self._state[b.name] = (min(float(b.capacity), level + b.cost), now)

    def _forget_full(self, now: float) -> None:
        """Drop buckets idle for a whole window (they are full again; absent means full)."""
        for name, (_, at) in list(self._state.items()):
            if now - at > WINDOW_S:
                del self._state[name]


# KEYS: bucket keys. ARGV: mode ("take" | "refund"), then capacity, cost per bucket.
# Each bucket is a hash {level, at_us}; it expires after a window idle (absent means full).
# Returns {allowed, retry_after_ms, short_index (1-based, 0 none), level_milli per bucket}.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local levels = {}
local wait = 0
local short = 0
for i = 1, n do
  local cap = tonumber(ARGV[2 * i])
  local cost = tonumber(ARGV[2 * i + 1])
  local rate = cap / 60000000
  local h = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level = cap
  if h[1] then
    level = math.min(cap, tonumber(h[1]) + (now - tonumber(h[2])) * rate)
  end
  levels[i] = level
  if ARGV[1] == 'take' and level < cost then
    if short == 0 then short = i end
    if cost > cap then wait = -1 elseif wait >= 0 then
      wait = math.max(wait, (cost - level) / rate / 1000)
    end
  end
end
local out = {}
for i = 1, n do
  local cap = tonumber(ARGV[2 * i])
  local cost = tonumber(ARGV[2 * i + 1])
  local level = levels[i]
  if short == 0 then
    if ARGV[1] == 'take' then level = level - cost else level = math.min(cap, level + cost) end
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[i], 120000)
  end
  out[i] = math.floor(level * 1000)
end
local allowed = 0
if short == 0 then allowed = 1 end
return {allowed, math.ceil(wait), short, unpack(out)}
"""


class RedisLimiter:
    """Buckets in Redis, shared by every backend process using the same prefix."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}rl:"
        self._script = redis.register_script(_LUA)

    async def _run(self, mode: str, buckets: list[Bucket]) -> list[int]:
        keys = [self.prefix + b.name for b in buckets]
        args: list[str | int] = [mode]
        for b in buckets:
            args += [b.capacity, b.cost]
        result = await self._script(keys=keys, args=args)
        return [int(x) for x in result]

    async def take(self, buckets: list[Bucket]) -> Decision:
        allowed, wait_ms, short, *milli = await self._run("take", buckets)
        levels = tuple(_level(b, m / 1000) for b, m in zip(buckets, milli, strict=True))
        return Decision(
            allowed=bool(allowed),
            retry_after_s=0.0 if allowed else (math.inf if wait_ms < 0 else wait_ms / 1000),
            levels=levels,
            short=None if allowed else buckets[short - 1].name,
        )

    async def refund(self, buckets: list[Bucket]) -> None:
        if any(b.cost for b in buckets):
            await self._run("refund", buckets)


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `250ms`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_headers(requests: Level, tokens: Level) -> dict[str, str]:
    """The six `x-ratelimit-*` headers every chat response carries."""
    return {
        "x-ratelimit-limit-requests": str(requests.capacity),
        "x-ratelimit-remaining-requests": str(requests.remaining),
        "x-ratelimit-reset-requests": format_reset(requests.reset_s),
        "x-ratelimit-limit-tokens": str(tokens.capacity),
        "x-ratelimit-remaining-tokens": str(tokens.remaining),
        "x-ratelimit-reset-tokens": format_reset(tokens.reset_s),
    }
