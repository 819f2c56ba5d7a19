"""The progress display: rows done of total, requests/s, tokens/s, failures, ETA.

Counters are read a few times a second by a timer instead of being pushed on every row, so the
display costs nothing on the hot path however fast rows finish.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from collections import Counter

    from stillroom.llm.stats import BackendStats
    from stillroom.pipeline.segments import Segment


class Counters(Protocol):
    """What the display reads of a run (the executor): rows done, outcomes, backend counters."""

    keys_done: int
    session_counts: Counter[str]

    def live_backend_stats(self) -> list[BackendStats]: ...


class RunProgress:
    def __init__(self, executor: Counters, *, enabled: bool = True):
        self.executor = executor
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._timer: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._base_done = 0
        self._base_keys = 0

    def __enter__(self) -> RunProgress:
        if self.enabled:
            console = Console(stderr=True)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
                TextColumn("{task.fields[rates]}"),
                TextColumn("[red]{task.fields[failures]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                refresh_per_second=4,
                transient=False,
                disable=not console.is_terminal,
            )
            self._progress.__enter__()
            self._timer = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._progress is not None:
            self._update()
            self._progress.__exit__(*exc)

    def start_segment(self, segment: Segment, total: int, already_done: int) -> None:
        self._base_done = already_done
        self._base_keys = self.executor.keys_done
        if self._progress is None:
            return
        names = [name for name, _ in segment.row_stages]
        if segment.all_rows_stage is not None:
            names.append(segment.all_rows_stage[0])
        description = " > ".join(names) or "writing"
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(
            description, total=total, completed=already_done, rates="", failures=""
        )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._update()

    def _update(self) -> None:
        if self._progress is None or self._task is None:
            return
        executor = self.executor
        elapsed = max(1e-9, time.monotonic() - self._started)
        requests = tokens = 0
        for stats in executor.live_backend_stats():
            requests += stats.responses
            tokens += stats.completion_tokens
        failed = executor.session_counts.get("failed", 0)
        self._progress.update(
            self._task,
            completed=self._base_done + executor.keys_done - self._base_keys,
            rates=f"{requests / elapsed:,.1f} req/s {tokens / elapsed:,.0f} tok/s",
            failures=f"{failed} failed" if failed else "",
        )
