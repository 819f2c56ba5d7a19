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

``input`` may also be rows in memory: a list of dicts or a ``datasets.Dataset`` (one split). They
keep what a file input promises: checked before any request (a bad row is a ConfigError naming
its index), fingerprinted by content (rerun with the same rows: it resumes; other rows: refused
as a different run unless ``overwrite=True``), ``limit`` and the Ray executor work the same.
``result.dataset`` reads the rows of ``data/`` back as a ``datasets.Dataset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stillroom.errors import ConfigError
from stillroom.llm.backend import BackendConfig
from stillroom.llm.llamacpp import LlamaCppConfig
from stillroom.pipeline.config import CardConfig, InputConfig, card_config, load_pipeline_file
from stillroom.pipeline.inputs import InputSpec, not_an_input, rows_in_memory
from stillroom.pipeline.run_types import RunOptions, RunResult
from stillroom.pipeline.stage import FunctionStage, Stage

DEFAULT_BACKEND = "default"


class Pipeline:
    def __init__(
        self,
        stages: Sequence[Stage | Callable[..., Any]],
        *,
        input: InputSpec = None,
        backends: dict[str, BackendConfig] | None = None,
        seed: int = 0,
        name: str | None = None,
        description: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        source_file: str | os.PathLike[str] | None = None,
        card: CardConfig | dict[str, Any] | None = None,
    ):
        if not stages:
            raise ConfigError("a pipeline needs at least one stage", key="stages")
        self.stages: list[Stage] = [
            stage if isinstance(stage, Stage) else FunctionStage.wrap(stage) for stage in stages
        ]
        for index, stage in enumerate(self.stages):
            if not isinstance(stage, Stage):
                raise ConfigError(f"stage {index} is not a Stage or a function", key="stages")
        if rows_in_memory(input) is None and not isinstance(
            input, (str, os.PathLike, InputConfig, type(None))
        ):
            raise not_an_input(input)
        self.input = input
        self.backends: dict[str, BackendConfig] = dict(backends or {})
        self.seed = seed
        self.name = name
        self.description = description
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.source_file = Path(source_file) if source_file is not None else None
        # What the dataset card's header says that a run cannot know (licence, language...).
        self.card = card_config(card)
        self.stage_names = stage_names(self.stages)
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
            card=data.card,
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


def stage_names(stages: Sequence[Stage]) -> list[str]:
    """The names a pipeline gives its stages (in the card, the run's figures, ``failed/``'s
    ``stage``): each one's ``name``, else its type, with ``_2``, ``_3``... for repeats."""
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
