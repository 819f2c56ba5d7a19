"""Running: a stage (or a few) on an input, a pipeline file, and reading an output folder back."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from stillroom.data.output import OutputFolder
from stillroom.errors import OutputFolderError
from stillroom.llm.backend import BackendConfig
from stillroom.pipeline.inputs import InputSpec
from stillroom.pipeline.pipeline import Pipeline, RunResult
from stillroom.pipeline.stage import Stage
from stillroom.report.summary import failure_examples, summarize

Row = dict[str, Any]
Input = InputSpec
StageLike = Stage | Callable[..., Any]


def run_stage(
    stage: StageLike | Sequence[StageLike],
    input: Input,
    out: str | os.PathLike[str],
    *,
    backends: dict[str, BackendConfig] | None = None,
    seed: int = 0,
    name: str | None = None,
    **run_options: Any,
) -> RunResult:
    """Run ``stage`` (or several stages, in order) on ``input`` into the folder ``out``.

    ``input`` is a file or folder, rows in memory (a list of dicts or a ``datasets.Dataset``:
    fingerprinted by content, so the same rows resume and other rows are a different run), or
    an :class:`InputConfig` (a mix); ``name``
    titles the run's card; ``run_options`` are :class:`~stillroom.pipeline.pipeline.RunOptions`
    (``overwrite``, ``progress``, ``limit``, ``executor``, ...). What each stage measured is in
    ``result.summary["stage_results"]``, under the stage's name in the pipeline.
    """
    stages = list(stage) if isinstance(stage, Sequence) else [stage]
    pipeline = Pipeline(stages, input=input, backends=backends, seed=seed, name=name)
    return pipeline.run(out, **run_options)


def run_pipeline(path: str | os.PathLike[str], out: str | os.PathLike[str], **run_options: Any) -> RunResult:
    return Pipeline.from_file(path).run(out, **run_options)


def inspect_output(out: str | os.PathLike[str], samples: int = 3) -> dict[str, Any]:
    """What an output folder holds: counts, reasons, a few rows; works on unfinished runs too."""
    folder = OutputFolder(out)
    if not folder.root.is_dir() or not (folder.root / "data").is_dir():
        raise OutputFolderError(f"{folder.root} is not a stillroom output folder (no data/ inside)")
    # A folder being written may be caught between a shard's rewrite and its record: only a
    # folder nobody writes is judged.
    damage = [] if folder.writer() else folder.damage()
    if damage:
        raise OutputFolderError(
            f"{damage[0]}{f' (and {len(damage) - 1} more damaged files)' if len(damage) > 1 else ''}"
            "; run the command that made this folder again: it undoes the damaged commits and "
            "does their rows again (answers come from the request cache)"
        )
    try:
        summary = summarize(folder)
        summary["samples"] = folder.read_rows("data", limit=samples)
        summary["failure_examples"] = failure_examples(folder)
    except (OSError, ValueError) as error:  # pyarrow's errors for a damaged or vanishing file
        writer = folder.writer()
        raise OutputFolderError(
            f"cannot read {folder.root}: {error}"
            + (f"; it is being written by {writer}: inspect it again when that is done"
               if writer else "; run the command that made it again to repair it")
        ) from None
    return summary
