"""The options the verbs share (output folder, cache, limits, where rows run), as Typer takes them,
and the run options they become."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

# Options shared by every verb that runs a pipeline.
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an earlier run in OUT.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the request cache.")]
CacheDir = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Request cache folder (default: $STILLROOM_CACHE_DIR or ~/.cache/stillroom)."),
]
MaxFailureRate = Annotated[
    float,
    typer.Option("--max-failure-rate", min=0.0, max=1.0, help="Exit 1 when more rows than this share fail."),
]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bar.")]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N input rows.")]
FlushRows = Annotated[int, typer.Option("--flush-rows", min=1, help="Commit after this many finished rows.")]
FlushSeconds = Annotated[float, typer.Option("--flush-seconds", min=0.0, help="...or after this many seconds.")]

# Where rows are processed (see docs/scaling.md).
ExecutorOption = Annotated[
    str,
    typer.Option("--executor", help="local (this process) or ray (a pool of Ray workers: a local "
                 "Ray, or the cluster at --address)."),
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster to join (auto, or ray://HOST:10001) "
                 "(default: start a local Ray for this run)."),
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Ray workers (actors), each with its own backends "
                 "(default: one per CPU of the cluster, or per GPU set a local engine needs)."),
]
# One meaning on every verb that sends requests (run, complete): requests in flight per backend.
ConcurrencyOption = Annotated[
    int | None,
    typer.Option("--concurrency", "-c", min=1,
                 help="Requests in flight per backend, in place of each backend's own "
                      "`concurrency`; with --executor ray, per worker (the number of workers is "
                      "--workers)."),
]
GpusPerWorker = Annotated[
    float | None,
    typer.Option("--gpus-per-worker", min=0.0, help="GPUs given to each Ray worker "
                 "(default: what the pipeline's local engine needs, e.g. vLLM's tensor_parallel_size)."),
]


def executor_options(
    executor: str, address: str | None, workers: int | None, gpus_per_worker: float | None
) -> dict[str, Any]:
    """The Ray options as RunOptions takes them; a bad combination is refused there, by key."""
    return {"executor": executor, "ray_address": address, "workers": workers,
            "gpus_per_worker": gpus_per_worker}


def run_options(
    overwrite: bool,
    no_cache: bool,
    cache_dir: Path | None,
    max_failure_rate: float,
    no_progress: bool,
    limit: int | None,
    flush_rows: int,
    flush_seconds: float,
) -> dict[str, Any]:
    return {
        "overwrite": overwrite,
        "use_cache": not no_cache,
        "cache_dir": cache_dir,
        "max_failure_rate": max_failure_rate,
        "progress": not no_progress,
        "limit": limit,
        "flush_rows": flush_rows,
        "flush_seconds": flush_seconds,
    }


# Three states, because the default is decided at the end of a run: the sentence model is loaded
# only when the run took long enough that loading it costs little beside it (pipeline.finish).
EmbeddingsOption = Annotated[
    bool | None,
    typer.Option("--embeddings/--no-embeddings",
                 help="Embedding diversity measures at the end of the run: --embeddings measures "
                      "them whatever the run took; --no-embeddings never loads the sentence "
                      "model; by default a run under a minute skips them (distinct-n and exact "
                      "duplicates are measured either way)."),
]


def diversity_embeddings(flag: bool | None) -> bool | str:
    """The ``diversity_embeddings`` run option for ``--embeddings/--no-embeddings``."""
    return True if flag is None else ("always" if flag else False)


# Chat messages: which roles' turns a text verb (dedup, decontaminate) reads.
RolesOption = Annotated[
    list[str] | None,
    typer.Option("--roles", help="Chat messages: only the turns of these roles (repeat the "
                 "option or give a comma list: --roles user,assistant) (default: every turn)."),
]


def role_list(values: list[str] | None) -> list[str] | None:
    """``--roles`` as the stage's ``roles``: repeated options and comma lists both, spaces
    and empty parts dropped; None (every turn) when not given."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]
