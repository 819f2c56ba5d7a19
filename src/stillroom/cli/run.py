"""``stillroom run PIPELINE.yaml -o OUT``: run (or resume) a pipeline file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import app, friendly_errors, print_result
from stillroom.cli.app import out as console
from stillroom.cli.options import (
    AddressOption,
    CacheDir,
    ExecutorOption,
    FlushRows,
    FlushSeconds,
    GpusPerWorker,
    Limit,
    MaxFailureRate,
    NoCache,
    NoProgress,
    OutOption,
    Overwrite,
    executor_options,
    run_options,
)


@app.command()
@friendly_errors
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file (YAML).")],
    out: OutOption,
    overwrite: Overwrite = False,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    max_failure_rate: MaxFailureRate = 0.0,
    no_progress: NoProgress = False,
    limit: Limit = None,
    flush_rows: FlushRows = 1000,
    flush_seconds: FlushSeconds = 10.0,
    no_embeddings: Annotated[
        bool,
        typer.Option("--no-embeddings",
                     help="Skip the embedding diversity measures (no sentence model is loaded)."),
    ] = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "--concurrency", min=1,
                     help="Ray workers (actors), each with its own backends (default: one per "
                          "CPU of the cluster, or per GPU set a local engine needs)."),
    ] = None,
    gpus_per_worker: GpusPerWorker = None,
) -> None:
    """Run a pipeline file, or a workflow file (``steps:`` of pipelines, training and evaluation,
    see stillroom.workflow); rerunning the same command resumes where it stopped."""
    from stillroom.api import run_pipeline
    from stillroom.workflow import Workflow, is_workflow_text

    options = run_options(overwrite, no_cache, cache_dir, max_failure_rate, no_progress, limit,
                          flush_rows, flush_seconds)
    options |= executor_options(executor, address, workers, gpus_per_worker)
    from stillroom.pipeline.config import read_config_file

    if is_workflow_text(read_config_file(pipeline, "pipeline")):
        Workflow.from_file(pipeline).run(
            out, log=lambda line: console.print(line, highlight=False, markup=False),
            **options, diversity_embeddings=not no_embeddings,
        )
        return
    result = run_pipeline(pipeline, out, **options, diversity_embeddings=not no_embeddings)
    print_result(result)
