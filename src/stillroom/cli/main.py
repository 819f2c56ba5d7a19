"""``stillroom``: the command line. Each verb is a thin wrapper over a function in ``stillroom.api``."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from stillroom.errors import StillroomError

app = typer.Typer(
    name="stillroom",
    help="Synthetic data and distillation for LLM post-training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(command: F) -> F:
    """Known problems print one clear line and exit non-zero; Ctrl-C says how to resume."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StillroomError as error:
            # soft_wrap: a path in the message must not be broken across lines; escape: a key like
            # `stages[0]` is not rich markup.
            err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print(
                "[yellow]interrupted.[/] Finished rows are saved and every answer received is in "
                "the request cache: run the same command again to resume.",
                soft_wrap=True,
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


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


def print_result(result: Any) -> None:
    from stillroom.cli.show import show_result

    show_result(out, result)
    for warning in (getattr(result, "summary", None) or {}).get("warnings") or []:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if not result.ok:
        err.print(
            f"[bold red]{result.counts['failed']} rows failed ({result.failure_rate:.2%}), more than "
            f"--max-failure-rate {result.max_failure_rate:.2%}.[/] They are in {result.out}/failed/ "
            "with their reasons. Once the cause is fixed, rerun with --overwrite: every answer "
            "already received comes from the request cache, so only the failed requests are sent.",
            soft_wrap=True,
        )
        raise typer.Exit(1)


# Each verb lives in its own file and registers itself on `app`.
from stillroom.cli import (  # noqa: E402,F401
    complete,
    decontaminate,
    dedup,
    evaluate,
    filter,
    inspect,
    mix,
    quickstart,
    run,
    select,
    train,
    train_dpo,
    train_kd,
    verify,
)


def main() -> None:  # pragma: no cover - the console script calls `app` directly
    app(prog_name="stillroom")
    sys.exit(0)
