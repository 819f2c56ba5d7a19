"""The local executor: rows stream through the stages on one asyncio loop, without barriers.

How a run goes:

1. The input is read once in full and checked (no request is sent for a bad file), then the
   output folder is prepared: an earlier session of the same run is resumed, a different run in
   the folder is refused.
2. The stages are cut into *segments* at each stage that needs all rows. Within a segment every
   input row (a *key*) travels through the row-wise stages in its own task; at most a window of
   rows is in flight, and each backend's limiter bounds its requests, so one slow request holds
   only its own row. A row that becomes several rows keeps its key; the key is finished when all
   of its rows reached data, failed or dropped, and only finished keys are committed, all their
   rows at once. A rerun skips committed keys and finds every answered request in the cache.
   Where a segment has no row stage, rows cost nothing to redo: its keys are chunks of
   ``segments.ROWS_PER_CHUNK`` rows, committed one at a time, and no task is made per row.
3. An all-rows stage gets its segment's output in input order (so its result does not depend on
   arrival order), and its output is checkpointed in the same commit as the segment's failures and
   drops; a rerun restarts from the latest checkpoint.
4. An :class:`AllRowsFilter` that comes first in a segment (right after the input or a checkpoint)
   is no boundary: it indexes the segment's rows in one pass over the file, then decides each row
   as the rows stream in again, so the rows are never all in memory. It runs again in every
   session (its decisions are the same for the same rows); only its committed keys are skipped.
5. At the end, shards get one schema, and the dataset card and report are written (see
   :mod:`stillroom.pipeline.finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillroom.data.commit_log import RunState
from stillroom.data.output import OutputFolder
from stillroom.data.row_files import as_checkpointed
from stillroom.data.rows import Row
from stillroom.errors import RunAbort
from stillroom.llm.cache import RequestCache
from stillroom.llm.client import LLMClient
from stillroom.llm.stats import BackendStats, wall_now
from stillroom.llm.types import RequestFailed
from stillroom.pipeline.finish import finish_run
from stillroom.pipeline.inputs import InputSource
from stillroom.pipeline.progress import RunProgress
from stillroom.pipeline.segments import Segment, split_segments
from stillroom.pipeline.stage import (
    AllRowsFilter,
    AllRowsStage,
    Drop,
    Dropped,
    Failed,
    ParallelMap,
    RowDecisions,
    RowFailure,
    Rows,
    StageContext,
    close_stages,
)
from stillroom.secrets import redact

if TYPE_CHECKING:
    from stillroom.pipeline.run_types import PipelinePlan, RunOptions, RunResult

Outcome = tuple[str, Row, tuple[int, ...]]  # (kind, row, order within the key)

log = logging.getLogger(__name__)


@dataclass
class StageStats:
    rows_in: int = 0
    rows_out: int = 0
    dropped: int = 0
    failed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def failed_row(row: Row, stage: str, error: BaseException) -> Row:
    if isinstance(error, (RequestFailed, RowFailure)):
        kind, attempts = error.kind, error.attempts
    else:  # a bug in a stage: the row is kept, with the exception as its reason
        kind, attempts = type(error).__name__, 1
    out = dict(row)
    # The one place an error becomes a row: a server that echoes a key it was sent (or a URL
    # with credentials in a connection error) must not put it on disk.
    out.update({"error": redact(str(error) or kind), "error_type": kind, "stage": stage,
                "attempts": attempts})
    return out


def dropped_row(row: Row, stage: str, reason: str) -> Row:
    out = dict(row)
    # Like an error, a reason is free text a stage builds (a filter may quote a header, a
    # server's answer or the environment): it goes to disk in dropped/, so it is redacted too.
    out.update({"drop_reason": redact(reason), "stage": stage})
    return out


def decision_of(decisions: RowDecisions, position: int, row: Row) -> Row | Dropped | Failed:
    """A filter's decision on one row; a bug in it fails that row (with the exception as its
    reason, as in a row stage) instead of the run. RunAbort still stops the run."""
    try:
        return decisions.decide(position, row)
    except RunAbort:
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes a row with its reason
        return Failed(row, error)


async def run_to_end(awaitable: Any) -> Any:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile; the cancellation
    is raised after it finished. For work that must not be left half done (a commit)."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


class Sink:
    """Buffers the rows of finished keys and commits them in batches."""

    def __init__(self, executor: Executor, segment: int):
        self.executor = executor
        self.segment = segment
        # A key and its rows enter in one list.append, so an interrupt (a second Ctrl-C raises
        # KeyboardInterrupt between any two bytecodes) can never buffer one without the other.
        self.pending: list[tuple[str, list[Outcome]]] = []
        self.buffered = 0
        self.last_flush = time.monotonic()
        self._lock = asyncio.Lock()

    def add(self, key: str, outcomes: list[Outcome], rows: int = 1) -> None:
        """Buffer finished ``key`` (``rows`` input rows: more for a chunk) with its outcomes."""
        self.pending.append((key, outcomes))
        counts = self.executor.session_counts
        for kind, _, _ in outcomes:
            counts[kind] += 1
        self.buffered += len(outcomes) or 1
        self.executor.keys_done += rows

    def due(self) -> bool:
        options = self.executor.options
        return self.buffered >= options.flush_rows or (
            bool(self.pending) and time.monotonic() - self.last_flush >= options.flush_seconds
        )

    async def flush(self) -> None:
        async with self._lock:
            if not self.pending:
                return
            taken = self.pending
            self.pending, self.buffered = [], 0  # an interrupt before this: taken is flushed later
            self.last_flush = time.monotonic()
            rows: dict[str, list[Row]] = {"data": [], "failed": [], "dropped": []}
            keys = []
            for key, outcomes in taken:
                keys.append(key)
                for kind, row, _ in outcomes:
                    rows[kind].append(row)
            executor = self.executor
            # Once begun, a commit runs to its end even when the flush is cancelled (the timed
            # flusher is cancelled as the run ends): its thread goes on writing regardless, and
            # the lock must not be let go before it is done.
            await run_to_end(
                asyncio.to_thread(
                    executor.folder.commit,
                    executor.state,
                    rows,
                    keys,
                    segment=self.segment,
                    stats=executor.stats_record(),
                )
            )


class RowProcessor:
    """Runs a row through a segment's row stages, counting what each stage did.

    The local executor holds one; each Ray worker holds its own (see ``ray_executor``), so a row
    goes through the same code wherever it runs.
    """

    def __init__(self, seed: int, clients: dict[str, LLMClient], stage_stats: dict[str, StageStats]):
        self.seed = seed
        self.clients = clients
        self.stage_stats = stage_stats

    async def process(
        self, segment: Segment, index: int, row: Row, order: tuple[int, ...]
    ) -> list[Outcome]:
        """Run ``row`` through the row stages from ``index`` on; every row it becomes, with where
        it ended."""
        if index == len(segment.row_stages):
            return [("data", row, order)]
        name, stage = segment.row_stages[index]
        stats = self.stage_stats[name]
        stats.rows_in += 1
        ctx = StageContext(name, self.seed, self.clients)
        started = time.perf_counter()
        try:
            result = await stage.process(row, ctx)
        except (asyncio.CancelledError, RunAbort):
            raise  # RunAbort: the run itself cannot go on (a damaged cache); not this row's fault
        except Exception as error:  # noqa: BLE001 - every failure becomes a row with its reason
            stats.failed += 1
            return [("failed", failed_row(row, name, error), order)]
        finally:
            stats.seconds += time.perf_counter() - started
        if isinstance(result, Drop):
            stats.dropped += 1
            return [("dropped", dropped_row(row, name, result.reason), order)]
        if isinstance(result, dict):
            stats.rows_out += 1
            return await self.process(segment, index + 1, result, order)
        if isinstance(result, list):
            if not result:
                stats.dropped += 1
                return [("dropped", dropped_row(row, name, f"{name} produced no rows"), order)]
            outcomes: list[Outcome] = []
            children: list[tuple[int, Row]] = []
            for child_index, child in enumerate(result):
                if isinstance(child, Dropped):  # something the stage tried and discarded
                    stats.dropped += 1
                    outcomes.append(
                        ("dropped", dropped_row(child.row, name, child.reason), (*order, child_index))
                    )
                else:
                    children.append((child_index, child))
            stats.rows_out += len(children)
            parts = await asyncio.gather(
                *(
                    self.process(segment, index + 1, child, (*order, child_index))
                    for child_index, child in children
                )
            )
            return outcomes + [outcome for part in parts for outcome in part]
        stats.failed += 1
        error = RowFailure(
            f"stage {name!r} returned {type(result).__name__}; expected a row, a list of rows or Drop",
            kind="StageContractError",
        )
        return [("failed", failed_row(row, name, error), order)]


class Executor:
    def __init__(self, pipeline: PipelinePlan, out: Path, options: RunOptions):
        self.pipeline = pipeline
        self.out = out
        self.options = options
        self.folder = OutputFolder(out)
        self.state = RunState()
        self.clients: dict[str, LLMClient] = {}
        self.cache: RequestCache | None = None
        self.session_id = uuid.uuid4().hex[:12]
        self.session_counts: Counter[str] = Counter()
        self.stage_stats: dict[str, StageStats] = {name: StageStats() for name in pipeline.stage_names}
        self.keys_done = 0
        # Figures the all-rows filters measured over their rows in this session (see
        # RowDecisions.figures): the run's stage results prefer them to reading rows back.
        self.measured: dict[str, dict[str, Any] | None] = {}
        self.started = wall_now()  # with "ended": monotonic between the two (llm.stats)
        self.source = InputSource(pipeline.input, pipeline.base_dir, options.limit, pipeline.seed)
        self.rows = RowProcessor(pipeline.seed, self.clients, self.stage_stats)

    # -- set-up ------------------------------------------------------------------------------

    def _check_input(self) -> int:
        first = self.pipeline.stages[0]
        return self.source.check(first.check_row)

    def _build_clients(self) -> None:
        cache = None
        if self.options.use_cache:
            cache = self.cache = RequestCache.in_dir(self.options.cache_dir)
        for name, config in self.pipeline.used_backends().items():
            # from_config: the config's limits and retries, and its inline-trace parsing.
            self.clients[name] = LLMClient.from_config(config, cache=cache)

    def fingerprint(self) -> dict[str, Any]:
        # Version 2: keys of chunks where no row stage runs, and all-rows filters that stream
        # without a checkpoint; a folder of version 1 is another run (refused, --overwrite).
        return {"version": 2, "pipeline": self.pipeline.identity(), "input": self.source.identity()}

    def window(self) -> int:
        """How many keys may be in flight: enough to keep every backend's limiter full."""
        total = sum(client.limiter.max_limit for client in self.clients.values())
        return max(16, 2 * total)

    def executor_record(self) -> dict[str, Any]:
        """Where this session ran, for the session log (a run may resume on another executor)."""
        return {"kind": "local"}

    def parallel_map(self) -> ParallelMap:
        """How all-rows stages spread batch work (see StageContext): here, in this process."""
        return map

    def live_backend_stats(self) -> list[BackendStats]:
        """This session's counters of every backend, for the progress line."""
        return [client.stats for client in self.clients.values()]

    def stats_record(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "backends": {name: client.snapshot() for name, client in self.clients.items()},
            "stages": {name: stats.as_dict() for name, stats in self.stage_stats.items()},
        }

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> RunResult:
        # Everything that can be wrong with the input or the backends (a bad row, a missing API
        # key) is found before the output folder is touched or a request is sent.
        return await self.run_checked(self._check_input())

    async def run_checked(self, total: int) -> RunResult:
        """The run, once the input (``total`` rows) has been checked."""
        self.folder.refuse_as_input(self.source.path)
        self._build_clients()
        try:
            return await self._run_locked(total)
        finally:
            # Before the folder's lock is let go: a next session must not start while this
            # one's tool servers and subprocesses still run.
            await close_stages(self.pipeline.stages)
            self.folder.release()
            for client in self.clients.values():
                with contextlib.suppress(Exception):  # closing must not hide the run's outcome
                    await client.aclose()
            if self.cache is not None:
                await asyncio.to_thread(self.cache.close)

    async def _run_locked(self, total: int) -> RunResult:
        # prepare() takes the folder's writer lock; run_checked releases it after the card.
        self.state = self.folder.prepare(self.fingerprint(), overwrite=self.options.overwrite)
        for note in self.state.notes:
            log.warning("warning: %s", note)
        segments = split_segments(self.pipeline.stages, self.pipeline.stage_names)
        progress = RunProgress(self, enabled=self.options.progress)
        status = "failed"
        try:
            with progress:
                await self._run_segments(segments, total, progress)
            self.source.verify_unchanged()
            status = "complete"
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
            raise
        finally:
            self.folder.record_session(
                {
                    "session": self.session_id,
                    "status": status,
                    "notes": self.state.notes,
                    "started": self.started,
                    "ended": wall_now(),
                    "counts": dict(self.session_counts),
                    "executor": self.executor_record(),
                    **self.stats_record(),
                }
            )
        return finish_run(
            self.folder, self.pipeline, self.source, self.options, measured=self.measured,
            session_counts=self.session_counts, started=self.started,
        )

    async def _run_segments(self, segments: list[Segment], total: int, progress: RunProgress) -> None:
        start = 0
        source: Rows
        if self.state.checkpoints:
            last = max(self.state.checkpoints)
            start = last + 1
            source = Rows.of(self.folder.read_checkpoint(self.state.checkpoints[last]))
        else:
            source = Rows(lambda: (row for _, row in self.source.rows()), total)
        for segment in segments[start:]:
            done = self.state.done(segment.index)
            progress.start_segment(segment, len(source), segment.rows_done(done, len(source)))
            if segment.final:
                await self._run_final_segment(segment, source, done)
                return
            source = Rows.of(await self._run_gathering_segment(segment, source))

    def _context(self, name: str) -> StageContext:
        return StageContext(name, self.pipeline.seed, self.clients, self.parallel_map(),
                            self.cache)

    async def _decided(
        self, segment: Segment, source: Rows, skip: set[str]
    ) -> Iterator[tuple[str, Outcome]]:
        """Every row of ``source`` whose key is not in ``skip``, with its key, as the outcome
        the segment's head filter gives it: ``data`` for a row it keeps (the row stages take it
        on), else dropped or failed. Without a head filter every row is ``data``.

        The head filter indexes the rows first (a pass over them, in a thread); its decisions
        are then made one row at a time as the caller reads the rows again.
        """
        rows = ((position, row) for position, row in enumerate(source))
        if segment.head is None:
            return ((key, ("data", row, (position,))) for position, row in rows
                    if (key := segment.key(position)) not in skip)
        name, stage = segment.head
        stats = self.stage_stats[name]
        started = time.perf_counter()
        decisions = await stage.index(source, self._context(name))
        stats.seconds += time.perf_counter() - started
        self.measured[name] = decisions.figures
        # Changed while indexed: found before any decision is committed (checked again at the end).
        self.source.verify_unchanged()

        def decide() -> Iterator[tuple[str, Outcome]]:
            for position, row in rows:
                key = segment.key(position)
                if key in skip:
                    continue
                stats.rows_in += 1
                yield key, self._outcome(name, decision_of(decisions, position, row), (position,))

        return decide()

    def _outcome(self, name: str, item: Row | Dropped | Failed, order: tuple[int, ...]) -> Outcome:
        """An all-rows stage's item as an outcome, counted in its stage's figures."""
        stats = self.stage_stats[name]
        if isinstance(item, Dropped):
            stats.dropped += 1
            return ("dropped", dropped_row(item.row, name, item.reason), order)
        if isinstance(item, Failed):
            if isinstance(item.error, RunAbort):  # the run cannot go on, not this row
                raise item.error
            stats.failed += 1
            return ("failed", failed_row(item.row, name, item.error), order)
        stats.rows_out += 1
        return ("data", item, order)

    async def _feed(
        self,
        segment: Segment,
        source: Rows,
        skip: set[str],
        record: Callable[[str, list[Outcome]], None],
        on_done: Any,
    ) -> None:
        """Run the segment's rows (those not in ``skip``) through its head filter and row
        stages. A key's outcomes go to ``on_done`` at once when it is finished; the head
        filter's drops and failures of rows that the row stages then never see go to
        ``record`` (not awaited: it is called while the rows are read). Where there is no row
        stage, a key is a chunk of rows, finished as soon as it is read."""
        decided = await self._decided(segment, source, skip)
        if not segment.row_stages:  # one key per chunk of rows, and no task per row
            for key, items in itertools.groupby(decided, key=lambda item: item[0]):
                await on_done(key, [outcome for _, outcome in items])
            return

        def to_process() -> Iterator[tuple[str, Row]]:
            for key, outcome in decided:
                if outcome[0] == "data":
                    yield key, outcome[1]
                else:
                    record(key, [outcome])

        await self._stream(segment, to_process(), on_done, skip=set())

    async def _stream(
        self, segment: Segment, source: Iterator[tuple[str, Row]], on_done: Any, skip: set[str]
    ) -> None:
        """Run every key of ``source`` through the segment's row stages, ``window`` at a time.

        A semaphore and a done-callback keep the window: ``asyncio.wait`` over the pending set
        would walk all of it for every finished row, which at thousands of rows a second is a
        measurable share of the client's CPU.
        """
        window = asyncio.Semaphore(self.window())
        pending: set[asyncio.Task[None]] = set()
        crashed: list[BaseException] = []

        async def one(key: str, order: int, row: Row) -> None:
            outcomes = await self.rows.process(segment, 0, row, (order,))
            await on_done(key, outcomes)

        def finished(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            window.release()
            if not task.cancelled() and task.exception() is not None:
                crashed.append(task.exception())  # type: ignore[arg-type]

        try:
            for order, (key, row) in enumerate(source):
                if key in skip:
                    continue
                await window.acquire()
                if crashed:
                    break
                task = asyncio.create_task(one(key, order, row))
                pending.add(task)
                task.add_done_callback(finished)
            while pending and not crashed:
                await asyncio.wait(set(pending), return_when=asyncio.FIRST_EXCEPTION)
            if crashed:
                raise crashed[0]  # a crash of the executor itself (rows' own failures are rows)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _run_final_segment(self, segment: Segment, source: Rows, done: set[str]) -> None:
        sink = Sink(self, segment.index)

        async def on_done(key: str, outcomes: list[Outcome]) -> None:
            if not segment.row_stages:
                # A chunk (one outcome per row) is committed before the next one is read.
                sink.add(key, outcomes, rows=len(outcomes))
                await sink.flush()
                return
            sink.add(key, outcomes)
            if sink.due():
                await sink.flush()

        flusher = asyncio.create_task(self._flush_periodically(sink))
        try:
            await self._feed(segment, source, done, sink.add, on_done)
        finally:
            flusher.cancel()
            # Whatever finished is committed, even when the run is being interrupted.
            await asyncio.shield(sink.flush())

    async def _flush_periodically(self, sink: Sink) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.options.flush_seconds))
            if sink.due():
                await sink.flush()

    async def _run_gathering_segment(self, segment: Segment, source: Rows) -> list[Row]:
        kept: list[tuple[tuple[int, ...], Row]] = []
        side: dict[str, list[Row]] = {"failed": [], "dropped": []}

        def record(key: str, outcomes: list[Outcome]) -> None:
            for kind, row, order in outcomes:
                if kind == "data":
                    kept.append((order, row))
                else:
                    side[kind].append(row)
            self.keys_done += 1

        async def on_done(key: str, outcomes: list[Outcome]) -> None:
            record(key, outcomes)

        await self._feed(segment, source, set(), record, on_done)
        kept.sort(key=lambda item: item[0])
        assert segment.all_rows_stage is not None
        name, stage = segment.all_rows_stage
        stats = self.stage_stats[name]
        inputs = Rows.of([row for _, row in kept])
        kept.clear()
        stats.rows_in += len(inputs)
        started = time.perf_counter()
        output: list[Row] = []
        async for item in self._all_rows(name, stage, inputs):
            kind, row, _ = self._outcome(name, item, ())
            if kind == "data":
                output.append(row)
            else:
                side[kind].append(row)
        stats.seconds += time.perf_counter() - started
        for kind, rows in side.items():
            self.session_counts[kind] += len(rows)
        await run_to_end(
            asyncio.to_thread(
                self.folder.commit,
                self.state,
                {"failed": side["failed"], "dropped": side["dropped"]},
                [],
                segment=segment.index,
                stats=self.stats_record(),
                checkpoint=output,
            )
        )
        # Go on with the rows as a resumed session will read them back from the checkpoint, not
        # the ones in memory: later stages' requests (so their cache keys) are then the same in
        # every session.
        return as_checkpointed(output)

    async def _all_rows(
        self, name: str, stage: AllRowsStage, rows: Rows
    ) -> AsyncIterator[Row | Dropped | Failed]:
        """What an all-rows stage yields over ``rows``; a filter's figures are kept."""
        ctx = self._context(name)
        if not isinstance(stage, AllRowsFilter):
            async for item in stage.run(rows, ctx):
                yield item
            return
        decisions = await stage.index(rows, ctx)
        self.measured[name] = decisions.figures
        for position, row in enumerate(rows):
            yield decision_of(decisions, position, row)
