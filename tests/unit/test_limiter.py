from __future__ import annotations

import asyncio
import time

from stillroom.llm.limiter import AdaptiveLimiter


async def test_slow_down_pauses_everyone_for_retry_after_then_recovers() -> None:
    limiter = AdaptiveLimiter(4)
    await limiter.acquire()
    limiter.slow_down(0.2)
    limiter.release(ok=False)
    assert limiter.limit == 2
    started = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - started >= 0.19
    limiter.release(ok=True)
    for _ in range(10):
        await limiter.acquire()
        limiter.release(ok=True)
    assert limiter.limit == 4  # additive increase back to the maximum


async def test_repeated_rejections_within_a_second_halve_once() -> None:
    limiter = AdaptiveLimiter(16)
    for _ in range(5):
        limiter.slow_down()
    assert limiter.limit == 8


async def test_cancelled_waiters_do_not_leak_slots() -> None:
    limiter = AdaptiveLimiter(1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    limiter.release(ok=True)
    await asyncio.sleep(0)
    assert limiter.in_flight == 0
    await asyncio.wait_for(limiter.acquire(), 1)


async def test_only_rejections_of_requests_sent_after_the_last_decrease_count() -> None:
    limiter = AdaptiveLimiter(16)
    before = limiter.now()
    limiter.slow_down(sent_at=before)  # 16 -> 8
    for _ in range(5):
        limiter.slow_down(sent_at=before)  # in flight before the decrease: ignored
    assert limiter.limit == 8
    await asyncio.sleep(0.001)
    limiter.slow_down(sent_at=limiter.now())  # sent under the new limit: 8 -> 4
    assert limiter.limit == 4
