"""The end of a run: one schema per shard kind, the diversity of generated columns, each stage's
figures, the card and report (rendered by :mod:`stillroom.report`), the completion record.

It is handed what it needs (the folder, the pipeline, the input, the figures measured during the
run), not the executor, so every way of running a stage ends a run the same way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from stillroom.data.output import OutputFolder
from stillroom.errors import OutputFolderError
from stillroom.pipeline.run_types import RunResult
from stillroom.report.card import render_card
from stillroom.report.html import render_report
from stillroom.report.summary import failure_examples, summarize
from stillroom.secrets import redact_value

if TYPE_CHECKING:
    from stillroom.pipeline.inputs import InputSource
    from stillroom.pipeline.run_types import PipelinePlan, RunOptions


def _stage_text(path: Path, text: str) -> tuple[Path, Path]:
    """``text`` written next to ``path`` under a temporary name: (temporary, final)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    return tmp, path


def run_config(pipeline: PipelinePlan, source: InputSource) -> dict[str, Any]:
    """The pipeline as it ran, for the card, report and completion record. Backends hold no key
    (only the name of its environment variable; a URL with credentials is refused), and the
    whole is redacted besides: a stage option or ``extra_body`` may still hold a secret."""
    return redact_value({
        "name": pipeline.name,
        "description": pipeline.description,
        "input": source.description,
        "rows_read": source.count,
        **({"mix": source.mix_report} if source.mix_report else {}),
        "seed": pipeline.seed,
        "backends": {
            name: config.model_dump(mode="json", exclude_none=True)
            for name, config in pipeline.used_backends().items()
        },
        "stages": [
            {"name": name, **stage.model_dump(mode="json", exclude_none=True)}
            for name, stage in zip(pipeline.stage_names, pipeline.stages, strict=True)
        ],
    })


def measure_diversity(
    folder: OutputFolder, pipeline: PipelinePlan, options: RunOptions
) -> dict[str, dict[str, dict[str, Any]]]:
    """Diversity of every column a stage wrote with a model, as it stands in ``data/``.

    Measured once here and kept in the completion marker, so ``inspect`` reads it back instead
    of loading the embedding model again.
    """
    from stillroom.report.diversity import measure, texts_of

    results: dict[str, dict[str, dict[str, Any]]] = {}
    by_column: dict[str, dict[str, Any]] = {}  # two stages writing one column: measure it once
    for name, stage in zip(pipeline.stage_names, pipeline.stages, strict=True):
        for column in stage.generated_columns():
            if column not in by_column:
                texts = texts_of(_answers(folder, column))
                if options.progress:  # the embedding model can take a while: say so
                    from rich.console import Console

                    Console(stderr=True).print(
                        f"measuring diversity of {name}.{column} ({len(texts):,} texts)",
                        highlight=False,
                    )
                by_column[column] = measure(texts, embeddings=options.diversity_embeddings)
            results.setdefault(name, {})[column] = by_column[column]
    return results


def _answers(folder: OutputFolder, column: str) -> list[Any]:
    """A generated column's values in ``data/``; for the answer column, the answer wherever the
    row keeps it (a ``messages`` row's answer is its last turn; see data.rows)."""
    from stillroom.data.rows import ANSWER_COLUMN, row_answer

    if column != ANSWER_COLUMN:
        return folder.read_column("data", column)
    return [
        row[column] if row[column] is not None else row_answer(row)
        for row in folder.read_columns("data", [column, "messages"])
    ]


def stage_results(
    folder: OutputFolder, pipeline: PipelinePlan, measured: dict[str, dict[str, Any] | None]
) -> dict[str, dict[str, Any]]:
    """Each stage's own figures over the finished run: those it ``measured`` over all its rows
    in this session (an all-rows filter), else :meth:`Stage.summarize` over the rows in
    ``data/`` and ``dropped/``."""
    results: dict[str, dict[str, Any]] = {}
    for name, stage in zip(pipeline.stage_names, pipeline.stages, strict=True):
        figures = measured.get(name)
        if figures is None:
            columns = stage.summary_columns()
            if not columns:
                continue
            rows = folder.read_columns("data", columns) + folder.read_columns("dropped", columns)
            figures = stage.summarize(rows)
        if figures:
            results[name] = figures
    return results


def write_card_and_report(
    folder: OutputFolder,
    config: dict[str, Any],
    diversity: dict[str, dict[str, dict[str, Any]]] | None = None,
    results: dict[str, dict[str, Any]] | None = None,
    *,
    complete: bool = False,
) -> dict[str, Any]:
    """Write the card (README.md) and report.html of a finished run; returns the summary.

    With ``complete`` the run is marked complete (its completion record, see
    :func:`completion_record`) first, and the card and report appear after it: both are rendered to temporary
    files, then the record is written, then they are renamed into place. So a card is never
    seen on a run that is not complete (a kill in between leaves temporary files, which the
    next start removes, and a rerun writes them again).
    """
    from stillroom.report.plots import gather

    summary = summarize(folder)
    summary["complete"] = True
    summary["distributions"] = gather(folder)
    if results is not None:
        summary["stage_results"] = results
    if diversity is not None:
        from stillroom.report.diversity import all_warnings

        summary["diversity"] = diversity
        summary["warnings"] = [*summary.get("warnings", []), *all_warnings(diversity)]
    paths = folder.shard_paths("data")
    columns = pq.read_schema(paths[0]).names if paths else []
    samples = folder.read_rows("data", limit=3)
    staged = [
        _stage_text(folder.root / "README.md", render_card(summary, config, columns)),
        _stage_text(folder.root / "report.html",
                    render_report(summary, config, samples, failure_examples(folder))),
    ]
    if complete:
        folder.mark_complete(completion_record(summary, config))
    for tmp, final in staged:
        tmp.replace(final)
    return summary


def refresh_card_and_report(folder: OutputFolder) -> dict[str, Any]:
    """Write a finished run's card and report again, e.g. after a student was trained and
    evaluated on its data (see report.distillation); the figures measured at the end of the run
    come from its completion record."""
    from stillroom.report.summary import _completion_record

    record = _completion_record(folder)
    if not record:
        raise OutputFolderError(f"{folder.root} holds no finished run to report on")
    return write_card_and_report(folder, record.get("config") or {})


def completion_record(summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What ``.stillroom/complete.json`` keeps of a finished run (read back by ``inspect``, the
    card refresh and workflows)."""
    return {
        "finished": time.time(),
        "counts": summary["counts"],
        "diversity": summary.get("diversity", {}),
        "stage_results": summary.get("stage_results", {}),
        "warnings": summary.get("warnings", []),
        "config": config,
    }


def finish_run(
    folder: OutputFolder,
    pipeline: PipelinePlan,
    source: InputSource,
    options: RunOptions,
    *,
    measured: dict[str, dict[str, Any] | None],
    session_counts: dict[str, int],
    started: float,
) -> RunResult:
    """Make a run whose rows are all committed complete: shards of one schema, figures, card,
    report and completion record."""
    folder.harmonize_shards()
    summary = write_card_and_report(
        folder,
        run_config(pipeline, source),
        measure_diversity(folder, pipeline, options),
        stage_results(folder, pipeline, measured),
        complete=True,
    )
    return RunResult(
        out=folder.root,
        counts=summary["counts"],
        session_counts=dict(session_counts),
        failures_by_reason=summary["failures_by_reason"],
        drops_by_reason=summary["drops_by_reason"],
        backends=summary["backends"],
        seconds=time.time() - started,
        max_failure_rate=options.max_failure_rate,
        summary=summary,
    )
