"""``stillroom run PIPELINE.yaml -o OUT``: run (or resume) a pipeline file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import app, err, friendly_errors, print_result
from stillroom.cli.app import out as console
from stillroom.cli.options import (
    AddressOption,
    CacheDir,
    ConcurrencyOption,
    EmbeddingsOption,
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
    WorkersOption,
    diversity_embeddings,
    executor_options,
    run_options,
)
from stillroom.errors import ConfigError


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
    embeddings: EmbeddingsOption = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    concurrency: ConcurrencyOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusPerWorker = None,
) -> None:
    """Run a pipeline file, or a workflow file (``steps:`` of pipelines, training and evaluation,
    see stillroom.workflow); rerunning the same command resumes where it stopped."""
    from stillroom.api.options import with_concurrency
    from stillroom.pipeline.config import read_config_file
    from stillroom.pipeline.pipeline import Pipeline
    from stillroom.workflow import Workflow, is_workflow_text

    options = run_options(overwrite, no_cache, cache_dir, max_failure_rate, no_progress, limit,
                          flush_rows, flush_seconds)
    options |= executor_options(executor, address, workers, gpus_per_worker)
    if is_workflow_text(read_config_file(pipeline, "pipeline")):
        if concurrency is not None:
            # A workflow's steps build their own backends (pipelines, evaluation judges).
            raise ConfigError("--concurrency applies to a pipeline file; in a workflow, set "
                              "`concurrency` on the backends of its steps", key="--concurrency")
        Workflow.from_file(pipeline).run(
            out, log=lambda line: console.print(line, highlight=False, markup=False),
            **options, diversity_embeddings=diversity_embeddings(embeddings),
        )
        return
    if concurrency is not None and executor == "ray" and workers is None:
        # In earlier versions --concurrency on `run` was another name for --workers: a user
        # who meant workers is told, once, rather than silently given other workers.
        err.print(f"note: --concurrency {concurrency} is requests in flight per backend (in each "
                  "Ray worker); the number of workers is --workers.", soft_wrap=True,
                  highlight=False, markup=False)
    plan = Pipeline.from_file(pipeline)
    plan.backends = with_concurrency(plan.backends, concurrency)
    result = plan.run(out, **options, diversity_embeddings=diversity_embeddings(embeddings))
    print_result(result, plan.stages)
