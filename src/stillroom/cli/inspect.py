"""``stillroom inspect OUT``: counts, a few rows, failures and drops by reason (``--json``: all of
it as one JSON object, for scripts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import app, friendly_errors, out

JSON_HELP = (
    "Print everything inspect shows as one JSON object on stdout, with these keys: folder, "
    "complete, counts {data, failed, dropped}, failure_rate, seconds, stages {stage: {rows_in, "
    "rows_out, dropped, failed, seconds}}, backends {name: {model, kind, requests_sent, "
    "cache_hits, retries, prompt_tokens, completion_tokens, ..., cost}}, cost (null when no "
    "backend has a price), failures_by_reason and drops_by_reason (lists of {reason, rows, "
    "example_ids}, most rows first), failure_examples, stage_results, diversity, warnings, "
    "distillation, sessions, samples (the first --samples rows of data/)."
)


@app.command()
@friendly_errors
def inspect(
    folder: Annotated[Path, typer.Argument(help="An output folder written by stillroom.")],
    samples: Annotated[int, typer.Option("--samples", "-n", min=0, help="Rows to show.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show what an output folder holds (finished or not): counts, rows per stage, token use and
    cost, failures and drops by reason with example row ids, diversity, and a few rows."""
    from stillroom.api import inspect_output
    from stillroom.cli.show import inspection_json, show_inspection

    summary = inspect_output(folder, samples)
    if as_json:
        # Plain print, not rich: no wrapping, highlighting or markup in what a program reads.
        typer.echo(json.dumps(inspection_json(folder, summary), ensure_ascii=False, indent=2))
        return
    show_inspection(out, folder, summary)
