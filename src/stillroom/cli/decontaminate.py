"""``stillroom decontaminate INPUT --against BENCH -o OUT``: drop rows that copy benchmark items.

See :mod:`stillroom.curate.decontaminate` for the rule (Tulu 3's 8-gram coverage of one item).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    RolesOption,
    WorkersOption,
    executor_options,
    role_list,
    run_options,
)


@app.command()
@friendly_errors
def decontaminate(
    input: Annotated[
        Path,
        typer.Argument(help="The training data: JSONL, Parquet, CSV or a datasets folder."),
    ],
    out_dir: OutOption,
    against: Annotated[
        list[Path],
        typer.Option("--against", "-a",
                     help="A benchmark (JSONL, Parquet, CSV or a datasets folder); repeat the "
                          "option for several."),
    ],
    bench_column: Annotated[
        list[str] | None,
        typer.Option("--bench-column",
                     help="A benchmark column to check (repeatable; default: the question-like "
                          "ones: question, problem, prompt, instruction, input, query, text, "
                          "passage)."),
    ] = None,
    bench_id_column: Annotated[
        str | None,
        typer.Option("--bench-id-column",
                     help="The benchmark column that names an item in drop reasons (default: "
                          "id, task_id, question_id, problem_id, unique_id or idx, else the "
                          "line)."),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option("--column", "-c",
                     help="A training column to search (repeatable; default: every text of the "
                          "row, chat messages included)."),
    ] = None,
    ngram: Annotated[
        int, typer.Option("--ngram", "-n", min=1, max=64, help="n-gram length in tokens.")
    ] = 8,
    threshold: Annotated[
        float,
        typer.Option("--threshold", min=0.0, max=1.0,
                     help="Drop a row covering more than this share of one benchmark item's "
                          "tokens (0: any shared n-gram)."),
    ] = 0.5,
    short_items: Annotated[
        str,
        typer.Option("--short-items",
                     help="Items shorter than the n-gram: exact (a text of the row is the whole "
                          "item) or skip."),
    ] = "exact",
    roles: RolesOption = None,
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
    """Drop training rows that copy benchmark items (n-gram overlap, Tulu 3 style); no model is
    called."""
    from stillroom import api
    from stillroom.curate.decontaminate import Decontaminate

    # A bad option is named by its key (short_items), as the stage's documentation spells it.
    stage = api.build_stage(
        Decontaminate,
        against=[str(path) for path in against],
        bench_columns=bench_column or None,
        bench_id_column=bench_id_column,
        columns=column or None,
        ngram=ngram,
        threshold=threshold,
        short_items=short_items,
        roles=role_list(roles),
    )
    result = api.run_stage(
        stage,
        input,
        out_dir,
        name="stillroom decontaminate",
        # No model is called: no request cache.
        **executor_options(executor, address, workers, gpus_per_worker),
        **run_options(overwrite, True, None, max_failure_rate, no_progress, limit,
                      flush_rows, flush_seconds),
    )
    print_result(result, [stage])
