"""``stillroom filter INPUT -o OUT --heuristics --ifd``: keep the rows that pass the chosen filters.

Each filter is a group of flags that turns into one pipeline stage (``--heuristics`` with
``--min-words``, ``--max-words`` and ``--language``: a ``heuristic_filter`` stage, see
stillroom.curate.heuristics; ``--ifd`` and its ``--ifd-*`` options: an ``ifd_filter`` stage, see
stillroom.curate.ifd); the chosen stages run
in one pipeline, in the order of the groups below, and what a filter removes goes to
``dropped/`` with its reason. A group's options without its switch are an error rather than
silently ignored.
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

IFD_PANEL = "IFD filter (Superfiltering)"
HEURISTICS_PANEL = "Heuristic filters"


def _heuristics_from_flags(enabled: bool, options: dict[str, Any]) -> list[Any]:
    """The ``heuristic_filter`` stage the --heuristics flags ask for (none without it): every
    check at its defaults, with the length bounds and languages given."""
    given = {key: value for key, value in options.items() if value not in (None, [])}
    if not enabled:
        if given:
            flags = ", ".join(f"--{key.replace('_', '-')}" for key in given)
            raise ConfigError(f"{flags} set but --heuristics is not; add --heuristics",
                              key="--heuristics")
        return []
    from stillroom import api
    from stillroom.curate.heuristics import HeuristicFilter

    length = {key: given[key] for key in ("min_completion", "max_completion") if key in given}
    try:
        return [api.build_stage(
            HeuristicFilter,
            length={"unit": "words", **length} if length else None,
            language=list(given["language"]) if "language" in given else None,
        )]
    except ConfigError as error:
        # The flags fill a stage option in part (--max-words is length.max_completion): the
        # problem names the group and the option.
        raise ConfigError(error.reason, key=f"--heuristics ({error.key})") from None


def _ifd_from_flags(enabled: bool, options: dict[str, Any]) -> list[Any]:
    """The ``ifd_filter`` stage the --ifd flags ask for (none without --ifd)."""
    given = {key: value for key, value in options.items() if value is not None}
    if not enabled:
        if given:
            flags = ", ".join(f"--ifd-{key.replace('_', '-')}" for key in given)
            raise ConfigError(f"{flags} set but --ifd is not; add --ifd", key="--ifd")
        return []
    from stillroom import api
    from stillroom.api.options import WHOLE
    from stillroom.curate.ifd import IFDFilter

    if "model" in given:
        given["model"] = str(given["model"])
    # Each option by its --ifd-* flag; a problem of several together by --ifd.
    named = {key: f"--ifd-{key.replace('_', '-')}" for key in options} | {WHOLE: "--ifd"}
    return [api.build_stage(IFDFilter, flags=named, **given)]


@app.command("filter")
@friendly_errors
def filter_command(
    input: Annotated[
        Path,
        typer.Argument(help="JSONL, Parquet, CSV or a datasets folder. --ifd reads "
                            "instruction/input/output, prompt/completion or messages."),
    ],
    out_dir: OutOption,
    heuristics: Annotated[
        bool,
        typer.Option("--heuristics", help="Drop empty or placeholder answers, answers cut off at "
                                          "the token limit, refusals and boilerplate, and "
                                          "repetitive text (runs before --ifd).",
                     rich_help_panel=HEURISTICS_PANEL),
    ] = False,
    min_completion: Annotated[
        int | None,
        typer.Option("--min-words", min=0, help="Fewest words in an answer (default 1).",
                     rich_help_panel=HEURISTICS_PANEL),
    ] = None,
    max_completion: Annotated[
        int | None,
        typer.Option("--max-words", min=1, help="Most words in an answer (default: no bound).",
                     rich_help_panel=HEURISTICS_PANEL),
    ] = None,
    language: Annotated[
        list[str] | None,
        typer.Option("--language", help="Keep only texts in this language (ISO 639-1, e.g. en); "
                                        "repeat for several.",
                     rich_help_panel=HEURISTICS_PANEL),
    ] = None,
    ifd: Annotated[
        bool,
        typer.Option("--ifd", help="Score each row's instruction-following difficulty (IFD) with a "
                                   "small local model; drop IFD >= 1, keep the highest IFDs.",
                     rich_help_panel=IFD_PANEL),
    ] = False,
    ifd_model: Annotated[
        Path | None,
        typer.Option("--ifd-model", help="A .gguf file or a transformers model folder "
                                         "(default: the embedded SmolLM2-135M).",
                     rich_help_panel=IFD_PANEL),
    ] = None,
    ifd_top_fraction: Annotated[
        float | None,
        typer.Option("--ifd-top-fraction", min=0.0, max=1.0,
                     help="Keep this share of the rows, highest IFD first (rounded up) "
                          "(default 0.1).",
                     rich_help_panel=IFD_PANEL),
    ] = None,
    ifd_top_k: Annotated[
        int | None,
        typer.Option("--ifd-top-k", min=1, help="Keep this many rows instead of a share.",
                     rich_help_panel=IFD_PANEL),
    ] = None,
    ifd_max_length: Annotated[
        int | None,
        typer.Option("--ifd-max-length", min=2,
                     help="Tokens of prompt + answer scored; a longer answer is cut "
                          "(default 1024).",
                     rich_help_panel=IFD_PANEL),
    ] = None,
    ifd_format: Annotated[
        str | None,
        typer.Option("--ifd-format",
                     help="auto, alpaca, prompt_completion or messages (default auto).",
                     rich_help_panel=IFD_PANEL),
    ] = None,
    ifd_batch_size: Annotated[
        int | None,
        typer.Option("--ifd-batch-size", min=1, help="Sequences per forward pass (default 16).",
                     rich_help_panel=IFD_PANEL),
    ] = None,
    ifd_device: Annotated[
        str | None,
        typer.Option("--ifd-device", help="auto, cpu, cuda, cuda:N or mps (default auto).",
                     rich_help_panel=IFD_PANEL),
    ] = None,
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
    """Keep the rows that pass the chosen filters; the others go to dropped/ with the reason."""
    from stillroom import api

    stages = _heuristics_from_flags(heuristics, {
        "min_completion": min_completion,
        "max_completion": max_completion,
        "language": language,
    })
    stages += _ifd_from_flags(ifd, {
        "model": ifd_model,
        "top_fraction": ifd_top_fraction,
        "top_k": ifd_top_k,
        "max_length": ifd_max_length,
        "format": ifd_format,
        "batch_size": ifd_batch_size,
        "device": ifd_device,
    })
    if not stages:
        raise ConfigError("choose at least one filter: --heuristics or --ifd", key="filter")
    result = api.run_stage(
        stages,
        input,
        out_dir,
        name="stillroom filter",
        # No request is sent: no request cache.
        **executor_options(executor, address, workers, gpus_per_worker),
        **run_options(overwrite, True, None, max_failure_rate, no_progress, limit,
                      flush_rows, flush_seconds),
    )
    print_result(result, stages)
