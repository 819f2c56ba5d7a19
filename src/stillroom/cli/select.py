"""``stillroom select INPUT -o OUT --size N``: keep N good, hard and varied rows (s1 / LIMA).

The flags build one ``select`` stage (see stillroom.curate.select): ``--quality-column`` with
``--min-quality`` (or a true/false column without it), ``--difficulty-column`` with one of
``--drop-when``, ``--min-difficulty`` or ``--keep-top``, and ``--diversity`` with its options.
A flag that belongs to a step or method that is not chosen is an error, not silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stillroom.cli.app import app, friendly_errors, print_result
from stillroom.cli.options import (
    AddressOption,
    ExecutorOption,
    FlushRows,
    FlushSeconds,
    GpusPerWorker,
    Limit,
    MaxFailureRate,
    NoProgress,
    OutOption,
    Overwrite,
    WorkersOption,
    executor_options,
    run_options,
)
from stillroom.errors import ConfigError

QUALITY = "Quality: drop rows below a score (or false)"
DIFFICULTY = "Difficulty: drop the easy rows"
DIVERSITY = "Diversity: cut to --size"

# Option keys of the stage -> the flags that set them, so an error names what the user typed.
FLAGS = {
    "size": "--size",
    "seed": "--seed",
    "quality": "--quality-column",
    "quality.column": "--quality-column",
    "quality.min": "--min-quality",
    "difficulty": "--difficulty-column",
    "difficulty.column": "--difficulty-column",
    "difficulty.drop_when": "--drop-when",
    "difficulty.min": "--min-difficulty",
    "difficulty.keep_top": "--keep-top",
    "diversity": "--diversity",
    "diversity.method": "--diversity",
    "diversity.domain_column": "--domain-column",
    "diversity.clusters": "--clusters",
    "diversity.text_column": "--text-column",
    "diversity.prefer": "--prefer",
}


def parse_drop_when(text: str) -> bool | int | float | str:
    """``true``/``false`` are booleans, ``3`` and ``0.5`` numbers, anything else text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _quality(column: str | None, minimum: float | None) -> dict[str, Any] | None:
    if column is None:
        if minimum is not None:
            raise ConfigError("--min-quality needs --quality-column", key="--min-quality")
        return None
    return {"column": column, "min": minimum}


def _difficulty(
    column: str | None, drop_when: str | None, minimum: float | None, keep_top: float | None
) -> dict[str, Any] | None:
    rules = {"--drop-when": drop_when, "--min-difficulty": minimum, "--keep-top": keep_top}
    given = [flag for flag, value in rules.items() if value is not None]
    if column is None:
        if given:
            raise ConfigError(f"{given[0]} needs --difficulty-column", key=given[0])
        return None
    if len(given) != 1:
        raise ConfigError(
            "--difficulty-column needs exactly one of --drop-when, --min-difficulty or --keep-top"
            + (f" (got {' and '.join(given)})" if given else ""),
            key="--difficulty-column",
        )
    step: dict[str, Any] = {"column": column}
    if drop_when is not None:
        step["drop_when"] = parse_drop_when(drop_when)
    if minimum is not None:
        step["min"] = minimum
    if keep_top is not None:
        step["keep_top"] = keep_top
    return step


# The --diversity methods each flag applies to.
METHOD_FLAGS = {
    "domain_column": ("--domain-column", ("domains",)),
    "clusters": ("--clusters", ("clusters",)),
    "text_column": ("--text-column", ("clusters", "kcenter")),
}


def _diversity(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The diversity step; a flag of another method is an error naming both."""
    given = {key: value for key, value in options.items() if value is not None}
    for key, (flag, methods) in METHOD_FLAGS.items():
        if key in given and method in ("domains", "clusters", "kcenter") and method not in methods:
            raise ConfigError(
                f"{flag} is for --diversity {' or '.join(methods)}, not {method}", key=flag
            )
    return {"method": method, **given}


@app.command("select")
@friendly_errors
def select_command(
    input: Annotated[
        Path,
        typer.Argument(help="JSONL, Parquet, CSV or a datasets folder."),
    ],
    out_dir: OutOption,
    size: Annotated[
        int, typer.Option("--size", min=1, help="How many rows to keep.", rich_help_panel=DIVERSITY)
    ],
    quality_column: Annotated[
        str | None,
        typer.Option("--quality-column", help="A score column (with --min-quality) or a "
                                              "true/false column (rows with false are dropped).",
                     rich_help_panel=QUALITY),
    ] = None,
    min_quality: Annotated[
        float | None,
        typer.Option("--min-quality", help="Drop rows whose score is below this.",
                     rich_help_panel=QUALITY),
    ] = None,
    difficulty_column: Annotated[
        str | None,
        typer.Option("--difficulty-column",
                     help="e.g. a weaker model's pass/fail (s1), an IFD score, a trace length.",
                     rich_help_panel=DIFFICULTY),
    ] = None,
    drop_when: Annotated[
        str | None,
        typer.Option("--drop-when", help="Drop rows whose value equals this (true, false, a "
                                         "number or a text): s1 drops what the weaker model "
                                         "solved, --drop-when true.",
                     rich_help_panel=DIFFICULTY),
    ] = None,
    min_difficulty: Annotated[
        float | None,
        typer.Option("--min-difficulty", "--min", help="Drop rows whose value is below this.",
                     rich_help_panel=DIFFICULTY),
    ] = None,
    keep_top: Annotated[
        float | None,
        typer.Option("--keep-top", min=0.0, max=1.0,
                     help="Keep this share of the rows, highest values first.",
                     rich_help_panel=DIFFICULTY),
    ] = None,
    diversity: Annotated[
        str,
        typer.Option("--diversity", help="domains (round-robin over --domain-column), clusters "
                                         "(k-means on embeddings) or kcenter (farthest-first).",
                     rich_help_panel=DIVERSITY),
    ] = "domains",
    domain_column: Annotated[
        str | None,
        typer.Option("--domain-column", help="domains: the domain column (default: domain).",
                     rich_help_panel=DIVERSITY),
    ] = None,
    clusters: Annotated[
        int | None,
        typer.Option("--clusters", min=1, help="clusters: how many k-means clusters "
                                                "(default: 50).",
                     rich_help_panel=DIVERSITY),
    ] = None,
    text_column: Annotated[
        str | None,
        typer.Option("--text-column", help="clusters / kcenter: the text embedded "
                                           "(default: the prompt).",
                     rich_help_panel=DIVERSITY),
    ] = None,
    prefer: Annotated[
        str | None,
        typer.Option("--prefer", help="Order inside a domain or cluster: longest (answer), "
                                      "random, or a column, highest first (default: longest).",
                     rich_help_panel=DIVERSITY),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seeds every random choice.")
    ] = 0,
    overwrite: Overwrite = False,
    max_failure_rate: MaxFailureRate = 0.0,
    no_progress: NoProgress = False,
    limit: Limit = None,
    flush_rows: FlushRows = 1000,
    flush_seconds: FlushSeconds = 10.0,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusPerWorker = None,
) -> None:
    """Keep --size rows: quality, then difficulty, then diversity (s1); the rest go to dropped/."""
    from stillroom import api
    from stillroom.curate.select import Select, check_input_columns

    stage = api.build_stage(
        Select,
        flags=FLAGS,
        size=size,
        quality=_quality(quality_column, min_quality),
        difficulty=_difficulty(difficulty_column, drop_when, min_difficulty, keep_top),
        diversity=_diversity(diversity, {
            "domain_column": domain_column,
            "clusters": clusters,
            "text_column": text_column,
            "prefer": prefer,
        }),
        seed=seed,
    )
    try:
        check_input_columns(stage, input)
    except ConfigError as error:  # a column an option names: the flag that named it
        raise ConfigError(error.reason, key=FLAGS.get(error.key or "", error.key)) from None
    result = api.run_stage(
        stage,
        input,
        out_dir,
        name="stillroom select",
        # No request is sent: no request cache.
        **executor_options(executor, address, workers, gpus_per_worker),
        **run_options(overwrite, True, None, max_failure_rate, no_progress, limit,
                      flush_rows, flush_seconds),
    )
    print_result(result, [stage])
