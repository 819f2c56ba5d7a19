"""Bounds the requests in flight to one backend, and slows the whole backend down on overload.

At most ``limit`` requests are in flight. A 429 or 503 halves the limit, but only when the
rejected request was sent after the last decrease: a burst of rejections of requests that were
already in flight says nothing about the new limit, so it must not collapse the limit to 1 (the
once-per-window rule of TCP congestion control). When the server said how long to wait
(Retry-After), every new request to that backend pauses until then.
Each run of ``limit`` successes raises the limit by one again, up to the configured maximum
(additive increase, multiplicative decrease, as TCP does).

Written here rather than taken from a library because asyncio.Semaphore cannot change its size
or pause, and the rate limiters on PyPI limit requests per second, not requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class AdaptiveLimiter:
    def __init__(self, max_limit: int):
        if max_limit < 1:
            raise ValueError("max_limit must be >= 1")
        self.max_limit = max_limit
        self.limit = max_limit
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._paused_until = 0.0
        self._wake_handle: asyncio.TimerHandle | None = None
        self._successes = 0
        self._last_decrease = float("-inf")

    def now(self) -> float:
        """The clock ``slow_down(sent_at=...)`` compares against."""
        return asyncio.get_running_loop().time()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._waiters and self.in_flight < self.limit and loop.time() >= self._paused_until:
            self.in_flight += 1
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        self._wake(loop)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # A slot was handed to us just as we were cancelled: give it to the next waiter.
                self.release(ok=False)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self, *, ok: bool) -> None:
        self.in_flight -= 1
        if ok and self.limit < self.max_limit:
            self._successes += 1
            if self._successes >= self.limit:
                self.limit += 1
                self._successes = 0
        if self._waiters:
            self._wake(asyncio.get_running_loop())

    def slow_down(self, retry_after: float | None = None, sent_at: float | None = None) -> None:
        """The backend is overloaded. ``sent_at`` (from :meth:`now`) is when the rejected request
        went out; without it, decreases are at least a second apart."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        fresh = sent_at > self._last_decrease if sent_at is not None else now - self._last_decrease >= 1.0
        if fresh:
            self.limit = max(1, self.limit // 2)
            self._successes = 0
            self._last_decrease = now
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)

    @property
    def paused_for(self) -> float:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0
        return max(0.0, self._paused_until - now)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if now < self._paused_until:
            if self._wake_handle is None or self._wake_handle.when() < self._paused_until:
                if self._wake_handle is not None:
                    self._wake_handle.cancel()
                self._wake_handle = loop.call_at(self._paused_until, self._on_timer, loop)
            return
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.in_flight += 1
            waiter.set_result(None)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake_handle = None
        self._wake(loop)
