"""``stillroom verify INPUT -o OUT --kind math``: a verifier's verdict on every row."""

from __future__ import annotations

import json
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
from stillroom.verify.base import verifiers

# Read from the registry, so a verifier a plugin adds is listed too. Not a Typer choice: an
# unknown kind is our one-line error naming the known ones, not a usage box.
KIND_HELP = f"Verifier: {', '.join(sorted(verifiers.items()))}."


def _options(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"--options must be a JSON object: {error}", key="--options") from None
    if not isinstance(value, dict):
        raise ConfigError("--options must be a JSON object, e.g. '{\"pattern\": \"yes|no\"}'",
                          key="--options")
    return value


@app.command()
@friendly_errors
def verify(
    input: Annotated[
        Path,
        typer.Argument(help="JSONL, Parquet, CSV or a datasets folder with `completion` and "
                            "what the verifier needs (`answer`, `tests`)."),
    ],
    out_dir: OutOption,
    kind: Annotated[
        str, typer.Option("--kind", "-k", help=KIND_HELP)
    ],
    answer_column: Annotated[
        str, typer.Option("--answer-column", help="The column that is checked.")
    ] = "completion",
    options: Annotated[
        str | None,
        typer.Option("--options",
                     help="The verifier's options as JSON, e.g. '{\"pattern\": \"yes|no\"}'."),
    ] = None,
    drop_failed: Annotated[
        bool,
        typer.Option("--drop-failed", help="Send rows that fail to dropped/ instead of data/."),
    ] = False,
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
    """Give every row `passed` and `reason` from a verifier (no model is called)."""
    from stillroom import api
    from stillroom.verify.stage import Verify

    stage = api.build_stage(
        Verify,
        # A problem with the verifier's options is one with what --options gave.
        flags={"options": "--options"},
        kind=kind,
        answer_column=answer_column,
        options=_options(options),
        drop_failed=drop_failed,
    )
    result = api.run_stage(
        stage,
        input,
        out_dir,
        name=f"stillroom verify --kind {kind}",
        # No model is called: no request cache.
        **executor_options(executor, address, workers, gpus_per_worker),
        **run_options(overwrite, True, None, max_failure_rate, no_progress, limit,
                      flush_rows, flush_seconds),
    )
    print_result(result, [stage])
