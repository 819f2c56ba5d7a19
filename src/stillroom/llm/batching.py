"""Micro-batching for in-process engines: requests that arrive together run as one batch.

A model loaded in this process (transformers, vLLM's offline engine) is fast only when it gets
many prompts at once, and must be used from one thread. So each request waits in a queue on the
event loop as a :class:`Job`; a *pump* task hands the waiting jobs, a batch at a time, to the one
worker thread, and while that thread runs a batch the next one gathers. Which jobs make a batch
(``take``) and what running one means (``run``) are the backend's; the queue, the thread and the
hand-over of results and errors are here, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Job:
    kind: str  # the backend's name for what is asked ("batch", "seeded", "score", ...)
    payload: Any
    future: asyncio.Future[Any]


Take = Callable[[list[Job]], tuple[list[Job], list[Job]]]
"""``take(waiting) -> (batch, rest)``: the next batch from the waiting jobs, oldest first."""
Run = Callable[[list[Job]], list[Any]]
"""``run(batch) -> results``: on the worker thread, one result or exception per job, in order."""


class MicroBatcher:
    def __init__(self, thread_name: str, take: Take, run: Run):
        self.thread_name = thread_name
        self.take = take
        self.run = run
        self._pending: list[Job] = []
        self._pump_task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def worker(self) -> ThreadPoolExecutor:
        """The one thread all model work runs on (loading included): a model must not be used
        from two threads at once, and one batch already uses every core or the whole GPU."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        return self._executor

    async def submit(self, kind: str, payload: Any) -> Any:
        """Queue one job and wait for its result (or its exception)."""
        loop = asyncio.get_running_loop()
        job = Job(kind, payload, loop.create_future())
        self._pending.append(job)
        pump = self._pump_task
        # A pump of another event loop (an earlier asyncio.run) will never run again.
        if pump is None or pump.done() or pump.get_loop() is not loop:
            self._pump_task = loop.create_task(self._pump())
        return await job.future

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Requests started in the same tick (asyncio.gather) join the first batch.
            await asyncio.sleep(0)
            # Jobs cancelled by a timeout, or left behind by a closed event loop, are dropped.
            live = [job for job in self._pending
                    if not job.future.done() and job.future.get_loop() is loop]
            batch, self._pending = self.take(live) if live else ([], [])
            if not batch:
                return
            results: list[Any]
            try:
                results = await loop.run_in_executor(self.worker(), self.run, batch)
            except asyncio.CancelledError:
                for job in batch:
                    job.future.cancel()
                raise
            except Exception as error:  # the whole batch failed (loading, out of memory...)
                results = [error] * len(batch)
            for job, result in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def close(self) -> None:
        """Wait for the batch in progress, then stop the thread (blocks)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)
