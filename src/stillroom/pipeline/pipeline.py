"""A pipeline: an input, named LLM backends and a list of stages. Built from a file or in Python.

    from stillroom import Pipeline
    from stillroom.stages import Complete
    from stillroom.llm import OpenAIConfig

    pipeline = Pipeline(
        input="prompts.jsonl",
        backends={"teacher": OpenAIConfig(model="m", base_url="http://127.0.0.1:8000/v1")},
        stages=[Complete(backend="teacher", n=2)],
        seed=0,
    )
    result = pipeline.run("out/")

The same pipeline written as YAML runs with ``stillroom run pipeline.yaml -o out/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stillroom.errors import ConfigError
from stillroom.llm.backend import BackendConfig
from stillroom.llm.llamacpp import LlamaCppConfig
from stillroom.pipeline.config import InputConfig, load_pipeline_file
from stillroom.pipeline.stage import FunctionStage, Stage

Row = dict[str, Any]
DEFAULT_BACKEND = "default"


@dataclass
class RunOptions:
    overwrite: bool = False
    use_cache: bool = True
    cache_dir: str | os.PathLike[str] | None = None
    progress: bool = True
    # Share of rows allowed to end in failed/ before the run counts as failed (exit code 1).
    max_failure_rate: float = 0.0
    # A commit happens after this many finished rows or this many seconds, whichever is first.
    flush_rows: int = 1000
    flush_seconds: float = 10.0
    limit: int | None = None
    # Measure the embedding diversity of generated columns at the end (loads a small sentence
    # model, needs the `embed` extra); the text measures are reported either way.
    diversity_embeddings: bool = True
    # Where rows are processed: "local" (this process, one asyncio loop) or "ray" (a pool of Ray
    # actors; see stillroom.pipeline.ray_executor). Neither is part of the run's identity: a run
    # started on one resumes on the other into the same output folder.
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: start a local Ray for this run and stop it after
    workers: int | None = None  # Ray actors (None: as many as the cluster's CPUs or GPUs allow)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: what the pipeline's local engines need

    def __post_init__(self) -> None:
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"unknown executor {self.executor!r}: use local or ray", key="executor")
        ray_only = {"ray_address": self.ray_address, "workers": self.workers,
                    "gpus_per_worker": self.gpus_per_worker}
        given = [name for name, value in ray_only.items() if value is not None]
        if self.executor == "local" and given:
            raise ConfigError(
                f"{', '.join(given)} only apply with executor='ray' (--executor ray); requests in "
                "flight to a backend are its `concurrency` (a backend option in a pipeline file, "
                "--concurrency on complete)",
                key=given[0],
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers must be at least 1", key="workers")
        if self.cpus_per_worker < 0 or (self.gpus_per_worker or 0) < 0:
            raise ConfigError("cpus_per_worker and gpus_per_worker cannot be negative",
                              key="cpus_per_worker")


@dataclass
class RunResult:
    out: Path
    counts: dict[str, int]
    session_counts: dict[str, int]
    failures_by_reason: dict[str, int]
    drops_by_reason: dict[str, int]
    backends: dict[str, dict[str, Any]]
    seconds: float
    max_failure_rate: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        finished = self.counts.get("data", 0) + self.counts.get("failed", 0)
        return self.counts.get("failed", 0) / finished if finished else 0.0

    @property
    def ok(self) -> bool:
        return self.failure_rate <= self.max_failure_rate


class Pipeline:
    def __init__(
        self,
        stages: Sequence[Stage | Callable[..., Any]],
        *,
        input: str | os.PathLike[str] | InputConfig | list[Row] | None = None,
        backends: dict[str, BackendConfig] | None = None,
        seed: int = 0,
        name: str | None = None,
        description: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        source_file: str | os.PathLike[str] | None = None,
    ):
        if not stages:
            raise ConfigError("a pipeline needs at least one stage", key="stages")
        self.stages: list[Stage] = [
            stage if isinstance(stage, Stage) else FunctionStage.wrap(stage) for stage in stages
        ]
        for index, stage in enumerate(self.stages):
            if not isinstance(stage, Stage):
                raise ConfigError(f"stage {index} is not a Stage or a function", key="stages")
        self.input = input
        self.backends: dict[str, BackendConfig] = dict(backends or {})
        self.seed = seed
        self.name = name
        self.description = description
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.source_file = Path(source_file) if source_file is not None else None
        self.stage_names = _unique_names(self.stages)
        self._check_backends()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Pipeline:
        model, base_dir = load_pipeline_file(path)
        data: Any = model
        return cls(
            list(data.stages),
            input=data.input,
            backends=dict(data.backends),
            seed=data.seed,
            name=data.name,
            description=data.description,
            base_dir=base_dir,
            source_file=path,
        )

    def _check_backends(self) -> None:
        for stage, name in zip(self.stages, self.stage_names, strict=True):
            for backend_name in stage.backend_names():
                if backend_name not in self.backends:
                    if backend_name == DEFAULT_BACKEND:
                        self.backends[DEFAULT_BACKEND] = LlamaCppConfig()
                    else:
                        known = ", ".join(sorted(self.backends)) or "none defined"
                        raise ConfigError(
                            f"stage {name!r} uses backend {backend_name!r}, which is not defined "
                            f"under `backends:` ({known})",
                            key="backend",
                        )
            stage.check_backends(self.backends)

    def used_backends(self) -> dict[str, BackendConfig]:
        names: set[str] = set()
        for stage in self.stages:
            names |= stage.backend_names()
        return {name: self.backends[name] for name in sorted(names)}

    def identity(self) -> dict[str, Any]:
        """What decides the output: used to refuse resuming into a folder of another run."""
        return {
            "seed": self.seed,
            "stages": [stage.identity() for stage in self.stages],
            "backends": {name: config.identity() for name, config in self.used_backends().items()},
        }

    def run(self, out: str | os.PathLike[str], **options: Any) -> RunResult:
        """Run to completion (or resume a run interrupted earlier) and write ``out``."""
        with terminate_as_interrupt(), asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:
            return runner.run(self.arun(out, **options))

    async def arun(self, out: str | os.PathLike[str], **options: Any) -> RunResult:
        from stillroom.pipeline.executor import Executor

        run_options = RunOptions(**options)
        if run_options.executor == "ray":
            from stillroom.pipeline.ray_executor import RayExecutor

            return await RayExecutor(self, Path(out), run_options).run()
        return await Executor(self, Path(out), run_options).run()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler, a container stop) stops a run the way Ctrl-C does:
    what finished is committed and the run can be resumed. Python's default for SIGTERM is to
    die at once, leaving rows that were answered but not yet committed to be asked for again
    from the cache. Only the main thread can install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        # asyncio.Runner turns SIGINT into a cancellation of the run (and KeyboardInterrupt).
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, interrupt)
    # A process started with SIGINT ignored (a background job of a script) would drop the SIGINT
    # sent above: give it Python's own handler for the run, so SIGTERM still stops it.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: a faster event loop for the same asyncio code (the client's
    CPU per request is its ceiling against a fast server; see bench/client_overhead.py)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def _unique_names(stages: list[Stage]) -> list[str]:
    names: list[str] = []
    for stage in stages:
        base = stage.name or stage.type
        name = base
        suffix = 2
        while name in names:
            name = f"{base}_{suffix}"
            suffix += 1
        names.append(name)
    return names
