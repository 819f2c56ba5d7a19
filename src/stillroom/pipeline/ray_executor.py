"""The Ray executor: the same pipeline, the same output folder, rows processed by a pool of Ray actors.

    stillroom run pipeline.yaml -o out/ --executor ray                 # a local Ray, started and stopped
    stillroom run pipeline.yaml -o out/ --executor ray --address auto  # the cluster this node is in
    pipeline.run("out/", executor="ray", workers=8)                    # the same from Python

We do not schedule anything ourselves: Ray Data does. What this module adds is the mapping of a
pipeline onto it, keeping every guarantee of the local executor:

* **Row stages** of a segment (the stages between two all-rows stages) run in ``map_batches``
  over an actor pool of ``workers`` actors. Each actor builds the pipeline's backends once (so a
  local engine, llama.cpp, transformers or vLLM, is loaded once per actor: N actors are N
  data-parallel replicas, each given ``gpus_per_worker`` GPUs) and runs a batch of keys through
  the very code the local executor uses (:class:`~stillroom.pipeline.executor.RowProcessor`),
  concurrently on its own event loop, within each backend's request limit.
* **Commits stay on the driver.** Each finished batch comes back to the driver, which commits its
  keys exactly as the local executor does (all the rows a key became, at once, in the output
  folder's commit log), every ``flush_rows`` rows or ``flush_seconds``. So progress is durable as
  batches finish, a rerun skips committed keys (with either executor: the executor is not part of
  the run's identity), and the folder is the local executor's folder.
* **Requests** go through each actor's request cache: the same SQLite file for all actors of a
  machine (WAL, one writer at a time), at the driver's cache path, so an answer any actor of that
  machine received is not asked again by a rerun. On a multi-node cluster each node keeps its own
  file at that path (SQLite's WAL needs one host: never point it at a network filesystem); a batch
  redone on another node asks its requests again.
* **A worker that dies** (killed, out of memory, its node lost) is restarted by Ray and its
  unfinished batch is run again; the driver keeps each key's first result only, so no row is lost
  or written twice, and the cache makes the rerun cheap.
* **All-rows stages** (dedup, bootstrapping pools) run on the driver, over every row, as locally;
  their batch work goes out as Ray tasks through ``StageContext.parallel_map`` (MinHash signatures
  are computed across the cluster, while the LSH buckets and the clusters are found over all rows
  at once, so duplicates in different workers' batches are found).

Rows travel pickled, so any value a row can hold locally it can hold here.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import os
import pickle
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillroom.data.rows import Row
from stillroom.errors import ConfigError, WorkerError
from stillroom.llm.cache import default_cache_dir
from stillroom.llm.stats import BackendStats
from stillroom.pipeline.executor import Executor, Outcome, RowProcessor, StageStats
from stillroom.pipeline.segments import Segment, split_segments
from stillroom.pipeline.stage import FunctionStage, ParallelMap, close_stages

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig
    from stillroom.pipeline.run_types import PipelinePlan, RunOptions, RunResult


# Keys handed to one actor call. Large enough that an actor's backends stay busy (each row of a
# batch runs concurrently within the backends' limits), small enough that a batch redone after a
# worker died costs little.
MIN_BATCH_KEYS = 64
# Blocks the pending rows are cut into at most (Ray Data's scheduling cost grows with them; a
# block larger than a batch is handed to the actor a batch at a time anyway).
MAX_BLOCKS = 2000
# Batches of an all-rows stage's parallel_map in flight per worker CPU.
MAP_TASKS_PER_CPU = 2
# How long an actor waits for its stages to close (an MCP server that does not stop) before it
# stops its loop anyway.
CLOSE_SECONDS = 30.0


def ray_module() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate part of the install
    except ImportError:
        raise ConfigError(
            "the Ray executor needs Ray: install it with `pip install 'stillroom[ray]'`",
            key="executor",
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray for one run: connect to ``address``, or start a local Ray with its own temp dir (so
    parallel runs and tests do not share one) and stop it after. A session already open in this
    process (a notebook, a test) is used as it is and left open."""
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    # Ray Data's progress bars and logs would interleave with our progress line.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    temp_dir = None
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # A short path: Ray puts unix sockets under it, and those have a ~100-byte limit.
        temp_dir = tempfile.mkdtemp(prefix="stillroom-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        ray.init(_temp_dir=temp_dir, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


# -- the worker: one Ray actor --------------------------------------------------------------------


@dataclass
class WorkerSpec:
    """What every actor gets: the pipeline and which segment it runs."""

    pipeline: PipelinePlan
    segment: int
    use_cache: bool
    cache_dir: str
    window: int


class SegmentWorker:
    """A Ray Data actor: runs batches of keys through one segment's row stages.

    Its event loop runs on a thread of its own for the actor's whole life, so the backends'
    connections, limiters and loaded models are made once and shared by every batch; calls from
    Ray (two at once, see ``_dataset``) hand their batch to that loop and wait.
    """

    def __init__(self, spec: bytes):
        import cloudpickle

        self.spec: WorkerSpec = cloudpickle.loads(spec)
        pipeline = self.spec.pipeline
        self.segment = split_segments(pipeline.stages, pipeline.stage_names)[self.spec.segment]
        self.stage_stats = {name: StageStats() for name, _ in self.segment.row_stages}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="stillroom-worker",
                                        daemon=True)
        self._thread.start()
        self.rows = asyncio.run_coroutine_threadsafe(self._build(), self.loop).result()
        self.window = asyncio.run_coroutine_threadsafe(self._semaphore(), self.loop).result()
        self._lock = threading.Lock()
        self._closed = False
        self._reported: dict[str, Any] = self._totals()

    async def _build(self) -> RowProcessor:
        from stillroom.llm.cache import RequestCache
        from stillroom.llm.client import LLMClient

        # Answers are written by the cache's own thread within about a millisecond of arrival;
        # an actor killed at the end of the run can lose only those last ones.
        # The driver checked the file whole before the run; each worker need not read it again.
        cache = (RequestCache.in_dir(self.spec.cache_dir, check=False) if self.spec.use_cache
                 else None)
        clients = {}
        for name, config in self.spec.pipeline.used_backends().items():
            clients[name] = LLMClient.from_config(config, cache=cache)
        return RowProcessor(self.spec.pipeline.seed, clients, self.stage_stats)

    async def _semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.spec.window)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        keys = [str(key) for key in batch["key"]]
        orders = [int(order) for order in batch["order"]]
        rows = [pickle.loads(blob) for blob in batch["row"]]
        results = asyncio.run_coroutine_threadsafe(self._run(orders, rows), self.loop).result()
        with self._lock:  # the counters since the last report go back with this batch
            totals = self._totals()
            delta = _subtract(totals, self._reported)
            self._reported = totals
        stats = [pickle.dumps(delta)] + [b""] * (len(keys) - 1)
        return {"key": keys, "outcomes": [pickle.dumps(result) for result in results], "stats": stats}

    async def _run(self, orders: list[int], rows: list[Row]) -> list[list[Outcome]]:
        async def one(order: int, row: Row) -> list[Outcome]:
            async with self.window:
                return await self.rows.process(self.segment, 0, row, (order,))

        return await asyncio.gather(*(one(order, row) for order, row in zip(orders, rows, strict=True)))

    def close(self) -> None:
        """Close the stages this actor ran (their tool servers, subprocesses), on the actor's
        loop where they were opened, then stop the loop. Once; later calls do nothing."""
        # A loop whose thread is gone (the process is exiting) can close nothing any more.
        if self._closed or not self._thread.is_alive():
            return
        self._closed = True
        try:
            stages = [stage for _, stage in self.segment.row_stages]
            asyncio.run_coroutine_threadsafe(close_stages(stages), self.loop).result(
                timeout=CLOSE_SECONDS)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)

    def __del__(self) -> None:
        # Ray Data deletes its actors' UDF on a graceful shutdown (at the end of each segment's
        # dataset), which is the one hook it gives; a killed actor's process is gone anyway.
        with contextlib.suppress(Exception):
            self.close()

    def _totals(self) -> dict[str, Any]:
        return {
            "stages": {name: stats.as_dict() for name, stats in self.stage_stats.items()},
            "backends": {name: client.snapshot() for name, client in self.rows.clients.items()},
        }


def _subtract(now: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """``now - before`` for nested dicts of counters (strings, such as a model name, kept)."""
    out: dict[str, Any] = {}
    for name, value in now.items():
        old = before.get(name)
        if isinstance(value, dict):
            out[name] = _subtract(value, old if isinstance(old, dict) else {})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value - (old or 0)
        else:
            out[name] = value
    return out


def pickle_spec(spec: WorkerSpec) -> bytes:
    """The spec as the workers get it. The functions of function stages are pickled by value
    (their code travels with them), so a function from a script or a module of your own runs on
    nodes where that module is not installed."""
    import cloudpickle

    modules = {
        stage._function.__module__
        for stage in spec.pipeline.stages
        if isinstance(stage, FunctionStage) and hasattr(stage, "_function")
    }
    by_value = [sys.modules[name] for name in modules
                if name in sys.modules and name != "__main__" and not name.startswith("stillroom.")]
    # The workers get their rows in batches, never from the input: without it, rows given in
    # memory (a list, a Dataset) do not travel whole to every actor inside its spec.
    pipeline = copy.copy(spec.pipeline)
    pipeline.input = None
    spec = dataclasses.replace(spec, pipeline=pipeline)
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return bytes(cloudpickle.dumps(spec))
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)


def worker_failure(error: BaseException) -> str | None:
    """A clear message for a worker that could not start (an import or a model file missing on
    a node); None for anything else."""
    try:
        from ray.exceptions import ActorDiedError, RayTaskError
    except ImportError:
        return None
    if not isinstance(error, (ActorDiedError, RayTaskError)):
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in reversed(lines)
                  if ": " in line and line.split(":", 1)[0].endswith(("Error", "Exception"))),
                 lines[-1] if lines else type(error).__name__)
    return (f"a Ray worker failed to start or run: {cause}. Every node needs the same stillroom "
            "install, the model files the pipeline names and the environment variables its "
            "backends read")


# -- parallel_map on Ray tasks ------------------------------------------------------------------------


def _apply(function: Callable[[Any], Any], item: Any) -> Any:
    return function(item)


class RayParallelMap:
    """``parallel_map`` for all-rows stages: each item a Ray task, results in order, a bounded
    number in flight (so a million texts are not all in the object store at once)."""

    def __init__(self, in_flight: int):
        ray = ray_module()
        self.ray = ray
        self.in_flight = max(1, in_flight)
        self.task = ray.remote(num_cpus=1, max_retries=3)(_apply)

    def __call__(self, function: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        ray = self.ray
        function_ref = ray.put(function)
        pending: list[Any] = []
        for item in items:
            pending.append(self.task.remote(function_ref, item))
            if len(pending) >= self.in_flight:
                yield ray.get(pending.pop(0))
        while pending:
            yield ray.get(pending.pop(0))


# -- sizing ----------------------------------------------------------------------------------------


def plan_workers(
    resources: dict[str, float], backends: list[BackendConfig], options: RunOptions
) -> tuple[int, float]:
    """How many workers, and GPUs for each, on a cluster with ``resources``.

    Each worker builds every backend the pipeline uses, so a local engine needing GPUs (vLLM's
    ``tensor_parallel_size``, transformers on ``cuda``) gets that many per worker: N workers are
    N data-parallel replicas. Asking for more than the cluster holds is refused here, since Ray
    would otherwise wait for resources that never come.
    """
    cpus = float(resources.get("CPU", 0))
    gpus = float(resources.get("GPU", 0))
    per_gpu = options.gpus_per_worker
    if per_gpu is None:
        per_gpu = float(max((config.gpus_per_replica() for config in backends), default=0))
    per_cpu = options.cpus_per_worker
    fits = [int(cpus // per_cpu) if per_cpu else None, int(gpus // per_gpu) if per_gpu else None]
    fit = min((count for count in fits if count is not None), default=options.workers or 1)
    if fit < 1:
        raise ConfigError(
            f"one worker needs {per_cpu:g} CPU and {per_gpu:g} GPU and the Ray cluster has "
            f"{cpus:g} CPU and {gpus:g} GPU", key="gpus_per_worker" if per_gpu else "cpus_per_worker",
        )
    workers = options.workers or fit
    if workers > fit:
        raise ConfigError(
            f"{workers} workers need {workers * per_cpu:g} CPU and {workers * per_gpu:g} GPU and the "
            f"Ray cluster has {cpus:g} CPU and {gpus:g} GPU: at most {fit} fit", key="workers",
        )
    return workers, per_gpu


# -- the driver -----------------------------------------------------------------------------------


class RayExecutor(Executor):
    """The local executor's run, with each segment's row stages sent to a Ray actor pool."""

    def __init__(self, pipeline: PipelinePlan, out: Path, options: RunOptions):
        super().__init__(pipeline, out, options)
        # The workers' request counters, summed from what each batch brings back.
        self.remote_backends: dict[str, BackendStats] = {}

    async def run(self) -> RunResult:
        # The input is checked before Ray starts: a bad row is reported in a moment, not after
        # the seconds a cluster takes to come up.
        total = self._check_input()
        with ray_session(self.options.ray_address):
            self._plan_workers()
            return await self.run_checked(total)

    # -- sizing ----------------------------------------------------------------------------------

    def _plan_workers(self) -> None:
        import ray

        resources = ray.cluster_resources()
        self.workers, self.gpus_per_worker = plan_workers(
            resources, list(self.pipeline.used_backends().values()), self.options
        )
        self.cluster_cpus = float(resources.get("CPU", 1))

    def executor_record(self) -> dict[str, Any]:
        return {"kind": "ray", "address": self.options.ray_address, "workers": self.workers,
                "gpus_per_worker": self.gpus_per_worker, "cluster_cpus": self.cluster_cpus}

    def parallel_map(self) -> ParallelMap:
        return RayParallelMap(int(self.cluster_cpus * MAP_TASKS_PER_CPU))

    # -- statistics from the workers -----------------------------------------------------------

    def live_backend_stats(self) -> list[BackendStats]:
        return super().live_backend_stats() + list(self.remote_backends.values())

    def stats_record(self) -> dict[str, Any]:
        record = super().stats_record()
        for name, remote in self.remote_backends.items():
            merged = BackendStats()
            merged.add(record["backends"].get(name, {}))
            merged.add(remote.as_dict())
            record["backends"][name] = merged.as_dict()
        return record

    def _absorb(self, delta: dict[str, Any]) -> None:
        for name, figures in delta.get("stages", {}).items():
            stats = self.stage_stats[name]
            for field_name, value in figures.items():
                setattr(stats, field_name, getattr(stats, field_name) + value)
        for name, figures in delta.get("backends", {}).items():
            self.remote_backends.setdefault(name, BackendStats()).add(figures)

    # -- a segment's row stages on the actor pool -------------------------------------------------

    async def _stream(
        self, segment: Segment, source: Iterator[tuple[str, Row]], on_done: Any, skip: set[str]
    ) -> None:
        items = [
            {"key": key, "order": order, "row": pickle.dumps(row)}
            for order, (key, row) in enumerate(source)
            if key not in skip
        ]
        if not items:
            return
        loop = asyncio.get_running_loop()
        seen: set[str] = set()

        async def deliver(batch: dict[str, Any]) -> None:
            stats = batch["stats"]
            for blob in stats:
                if blob:
                    self._absorb(pickle.loads(blob))
            for key, blob in zip(batch["key"], batch["outcomes"], strict=True):
                key = str(key)
                if key in seen:  # a batch redone after its worker died: the first result stands
                    continue
                seen.add(key)
                await on_done(key, pickle.loads(blob))

        stop = threading.Event()

        def drive() -> None:
            for batch in self._dataset(segment, items).iter_batches(batch_size=None,
                                                                      batch_format="numpy"):
                if stop.is_set():  # the run was interrupted: what arrives now is not committed
                    return
                asyncio.run_coroutine_threadsafe(deliver(batch), loop).result()

        try:
            await asyncio.to_thread(drive)
        except Exception as error:
            failure = worker_failure(error)
            if failure is None:
                raise
            raise WorkerError(failure) from error
        finally:
            stop.set()

    def _dataset(self, segment: Segment, items: list[dict[str, Any]]) -> Any:
        import ray.data

        window = self.window()
        spec = WorkerSpec(
            pipeline=self.pipeline,
            segment=segment.index,
            use_cache=self.options.use_cache,
            # Resolved here: a worker's environment and folder need not be the driver's.
            cache_dir=str(Path(self.options.cache_dir or default_cache_dir()).resolve()),
            window=window,
        )
        # A batch fills an actor's request slots (``window`` keys), but a small input is still
        # cut so that every worker gets some of it.
        batch_keys = max(1, min(max(MIN_BATCH_KEYS, window), -(-len(items) // (2 * self.workers))))
        blocks = min(MAX_BLOCKS, -(-len(items) // batch_keys))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        # Ray Data restarts a dead actor and reruns its batches by default (max_restarts and
        # max_task_retries -1), which is what "a dead worker's batch is redone" rests on.
        return dataset.map_batches(
            SegmentWorker,
            fn_constructor_kwargs={"spec": pickle_spec(spec)},
            batch_size=batch_keys,
            batch_format="numpy",
            # Two batches per actor at once: one finishing its slowest rows while the next fills
            # the backends' request slots (the batches share the actor's event loop).
            compute=ray.data.ActorPoolStrategy(
                size=self.workers, max_tasks_in_flight_per_actor=2,
                max_concurrent_calls_per_actor=2, enable_true_multi_threading=True,
            ),
            num_cpus=self.options.cpus_per_worker,
            num_gpus=self.gpus_per_worker or None,
        )

