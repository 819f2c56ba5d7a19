"""``stillroom decontaminate INPUT --against BENCH -o OUT``: drop rows that copy benchmark items.

See :mod:`stillroom.curate.decontaminate` for the rule (Tulu 3's 8-gram coverage of one item).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.main import (
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
    app,
    executor_options,
    friendly_errors,
    print_result,
    run_options,
)
from stillroom.cli.main import out as console


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
    from stillroom.curate.decontaminate import decontaminate as run_decontamination
    from stillroom.curate.decontaminate import outcome_line

    result = run_decontamination(
        input,
        out_dir,
        against=list(against),
        bench_columns=bench_column or None,
        bench_id_column=bench_id_column,
        columns=column or None,
        ngram=ngram,
        threshold=threshold,
        short_items=short_items,  # type: ignore[arg-type]  # checked by the stage
        # No model is called: no request cache.
        **executor_options(executor, address, workers, gpus_per_worker),
        **run_options(overwrite, True, None, max_failure_rate, no_progress, limit,
                      flush_rows, flush_seconds),
    )
    line = outcome_line(result.summary["decontaminate"])
    try:
        print_result(result)  # raises Exit(1) when too many rows failed
    finally:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
