"""Rate-limit token buckets: in process and in Redis (shared by several limiters)."""

from __future__ import annotations

import asyncio
import math

import pytest

from r3mes.backend.services.limits import (
    Bucket,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    format_reset,
    rate_headers,
)

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def buckets(tokens: int = 10) -> list[Bucket]:
    return [Bucket("k:req", 3, 1), Bucket("k:tok", 100, tokens)]


async def test_memory_buckets_refuse_then_refill() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    for left in (2, 1, 0):
        decision = await limiter.take(buckets())
        assert decision.allowed
        assert decision.levels[0].remaining == left
    refused = await limiter.take(buckets())
    assert not refused.allowed and refused.short == "k:req"
    assert refused.retry_after_s == pytest.approx(20.0)  # 3/min: one request per 20 s
    assert refused.levels[1].remaining == 70  # nothing taken from the token bucket
    clock.now += 20
    assert (await limiter.take(buckets())).allowed


async def test_all_or_nothing_and_refund() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.take([Bucket("a", 10, 1), Bucket("b", 100, 90)])).allowed
    refused = await limiter.take([Bucket("a", 10, 1), Bucket("b", 100, 20)])
    assert not refused.allowed and refused.short == "b"
    assert refused.levels[0].remaining == 9  # "a" untouched by the refused check
    await limiter.refund([Bucket("a", 10, 0), Bucket("b", 100, 80)])
    assert (await limiter.take([Bucket("a", 10, 1), Bucket("b", 100, 20)])).allowed


async def test_cost_over_capacity_is_never_allowed() -> None:
    limiter = MemoryLimiter()
    refused = await limiter.take([Bucket("t", 100, 101)])
    assert not refused.allowed and math.isinf(refused.retry_after_s)


def test_headers_format() -> None:
    assert format_reset(0.25) == "250ms"
    assert format_reset(6) == "6s"
    assert format_reset(360) == "6m0s"
    limiter_levels = asyncio.run(MemoryLimiter().take(buckets())).levels
    headers = rate_headers(*limiter_levels)
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "90"
    assert headers["x-ratelimit-reset-requests"] == "20s"


async def _exhaust(limiter: Limiter, n: int) -> int:
    results = await asyncio.gather(*(limiter.take([Bucket("shared:req", 50, 1)]) for _ in range(n)))
    return sum(d.allowed for d in results)


async def test_redis_buckets_are_atomic_across_limiters(redis_url: str, redis_prefix: str) -> None:
    from redis.asyncio import Redis

    clients = [Redis.from_url(redis_url) for _ in range(3)]
    try:
        limiters = [RedisLimiter(c, prefix=redis_prefix) for c in clients]
        # three "processes" race for one bucket of 50: exactly 50 get through
        allowed = sum(await asyncio.gather(*(_exhaust(lim, 40) for lim in limiters)))
        assert allowed == 50
        refused = await limiters[0].take([Bucket("shared:req", 50, 1)])
        assert not refused.allowed
        assert 0 < refused.retry_after_s <= 1.3  # 50/min: ~1.2 s per request
        # all-or-nothing and refund behave as in process
        assert (await limiters[1].take([Bucket("a", 10, 1), Bucket("b", 100, 90)])).allowed
        short = await limiters[2].take([Bucket("a", 10, 1), Bucket("b", 100, 20)])
        assert not short.allowed and short.short == "b"
        assert short.levels[0].remaining == 9
        await limiters[0].refund([Bucket("a", 10, 0), Bucket("b", 100, 80)])
        assert (await limiters[1].take([Bucket("a", 10, 1), Bucket("b", 100, 20)])).allowed
        too_big = await limiters[0].take([Bucket("c", 10, 11)])
        assert not too_big.allowed and math.isinf(too_big.retry_after_s)
        keys = [k async for k in clients[0].scan_iter(match=f"{redis_prefix}*")]
        assert keys and all(k.decode().startswith(f"{redis_prefix}rl:") for k in keys)
        for k in keys:
            assert 0 < await clients[0].pttl(k) <= 120_000
    finally:
        for c in clients:
            await c.aclose()
