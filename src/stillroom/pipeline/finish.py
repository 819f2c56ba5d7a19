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
    whole is redacted besides: a stage option or ``extra_body`` may still hold a secret.

    Besides the pipeline's own keys it holds facts of the run (``input`` as read, ``rows_read``,
    ``mix``, ``stage_backends``) and ``rerun_input``, the ``input:`` that reads the same rows
    again; the card writes a pipeline file from the pipeline's keys only (see
    :func:`stillroom.report.card.pipeline_file`), checked here to parse (``rerun_problem`` says
    why it would not)."""
    card = getattr(pipeline, "card", None)
    config = redact_value({
        "name": pipeline.name,
        "description": pipeline.description,
        "input": source.description,
        "rerun_input": rerun_input(pipeline, source),
        "rows_read": source.count,
        **({"mix": source.mix_report} if source.mix_report else {}),
        "seed": pipeline.seed,
        "backends": {
            name: config.model_dump(mode="json", exclude_none=True)
            for name, config in pipeline.used_backends().items()
        },
        "stages": [
            {"name": name, **_absolute_options(
                stage.model_dump(mode="json", exclude_none=True), stage.path_options,
                pipeline.base_dir)}
            for name, stage in zip(pipeline.stage_names, pipeline.stages, strict=True)
        ],
        "stage_backends": {
            name: sorted(stage.backend_names())
            for name, stage in zip(pipeline.stage_names, pipeline.stages, strict=True)
        },
        **({"card": card.model_dump(mode="json", exclude_none=True)} if card is not None else {}),
    })
    problem = _rerun_problem(config)
    if problem and _rerun_problem(config, pipeline.base_dir) is None:
        # Some option is still read from the pipeline's folder (a path we could not tell from
        # other text): the card says where the file must be saved rather than claim it reruns
        # from anywhere.
        config["rerun_folder"] = str(pipeline.base_dir)
    elif problem:
        config["rerun_problem"] = problem
    return config


def _absolute_options(options: dict[str, Any], path_options: tuple[str, ...],
                      base_dir: Path | None) -> dict[str, Any]:
    """A stage's dumped options with its path options (``Stage.path_options``: a benchmark, a
    rubric, principles, a model folder, read from the pipeline file's folder when relative)
    written absolute where they name an existing file or folder there, so that the card's file
    reruns wherever it is saved. Only the options a stage declares are touched: text that merely
    looks like a path (a stop string, a template, a column) is never rewritten.

    A dotted option names a key inside an option's mapping (``tools.python``: the ``python``
    key of ``tools:``); where the option holds a list, the key of each of its mappings."""
    def absolute(value: Any) -> Any:
        if isinstance(value, list):
            return [absolute(item) for item in value]
        if base_dir is None or not isinstance(value, str) or not _relative_path(value):
            return value
        try:
            candidate = Path(base_dir, value)
            return str(candidate.resolve()) if candidate.exists() else value
        except (OSError, ValueError):  # not a possible path (a NUL, too long): keep it
            return value

    def within(value: Any, inner: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return _absolute_options(value, inner, base_dir)
        if isinstance(value, list):
            return [within(item, inner) for item in value]
        return value  # not a mapping (yet): nothing inside it is a declared path

    out = dict(options)
    for key, value in options.items():
        if key in path_options:
            out[key] = absolute(value)
        inner = tuple(option.split(".", 1)[1] for option in path_options
                      if option.startswith(key + "."))
        if inner:
            out[key] = within(out[key], inner)
    return out


def _relative_path(text: str) -> bool:
    """Whether ``text`` could be a relative path the pipeline's folder resolves (not a
    ``builtin:`` name, ``~`` path or URL, which mean the same from any folder)."""
    from stillroom.data.readers import BUILTIN_PREFIX

    # "." or "/" would name the folder itself: a stop sequence or separator, not a path.
    return bool(text.strip(" ./")) and "\n" not in text and not (
        text.startswith((BUILTIN_PREFIX, "~")) or "://" in text or Path(text).is_absolute())


def rerun_input(pipeline: PipelinePlan, source: InputSource) -> Any:
    """The ``input:`` of a pipeline file that reads the same rows: absolute paths (the card's
    file may be saved anywhere), the limit the run read with; None for rows given in Python."""
    from stillroom.pipeline.inputs import InputConfig

    limit = {"limit": source.limit} if source.limit else {}
    if source.mix is not None:
        spec = source.mix.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        for item in spec["mix"]:
            item.setdefault("name", item["path"])  # the label rows and the card give it
            item["path"] = _rerun_path(item["path"], pipeline.base_dir)
        return {**spec, **limit}
    if source.path is not None:
        return {"path": str(source.path), **limit} if limit else str(source.path)
    if isinstance(pipeline.input, InputConfig) and pipeline.input.rows is not None:
        return {"rows": pipeline.input.rows, **limit}
    return None


def _rerun_path(path: str, base_dir: Path) -> str:
    """A mix source's path as the input reader resolves it (``~`` expanded, relative to the
    pipeline's folder); a ``builtin:`` name stays a name, which means the same anywhere."""
    from stillroom.data.readers import BUILTIN_PREFIX, resolve_input_path

    if str(path).startswith(BUILTIN_PREFIX):
        return str(path)
    return str(resolve_input_path(path, base_dir))


def _rerun_problem(config: dict[str, Any], base_dir: Path | None = None) -> str | None:
    """Why the card's pipeline file would not rerun this run, or None when it parses. Checked
    from an empty folder unless ``base_dir`` is given: the card's file is saved elsewhere than
    the pipeline's folder, so a path still read from there must not pass unnoticed."""
    import tempfile

    import yaml

    from stillroom.errors import ConfigError
    from stillroom.pipeline.config import parse_pipeline_text
    from stillroom.report.card import pipeline_file

    if config.get("rerun_input") is None:
        return "the input rows were given in Python: put a file under `input:` to rerun it"
    text = yaml.safe_dump(pipeline_file(config))
    try:
        if base_dir is not None:
            parse_pipeline_text(text, "the card's pipeline", base_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="stillroom-rerun-") as elsewhere:
                parse_pipeline_text(text, "the card's pipeline", Path(elsewhere))
    except ConfigError as error:
        return str(error)
    return None


def measure_diversity(
    folder: OutputFolder, pipeline: PipelinePlan, options: RunOptions,
    run_seconds: float | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Diversity of every column a stage wrote with a model, as it stands in ``data/``.

    Measured once here and kept in the completion marker, so ``inspect`` reads it back instead
    of loading the embedding model again. The embedding measures follow
    ``options.diversity_embeddings``: ``"always"``; ``False``, never; ``True`` (the default),
    unless this session ran for less than ``AUTO_EMBEDDINGS_MIN_RUN_SECONDS`` (``run_seconds``),
    where the model would cost more than the run. A column a later stage removed from ``data/``
    is measured where its texts still are (``completions`` -> the answer) or reported absent.
    """
    from stillroom.report.diversity import (
        AUTO_EMBEDDINGS_MIN_RUN_SECONDS,
        column_spec,
        measure,
        texts_of,
    )

    embeddings, skipped_because = bool(options.diversity_embeddings), None
    if (options.diversity_embeddings is True and run_seconds is not None
            and run_seconds < AUTO_EMBEDDINGS_MIN_RUN_SECONDS):
        embeddings = False
        skipped_because = (
            f"a {run_seconds:.0f} s run (under {AUTO_EMBEDDINGS_MIN_RUN_SECONDS:.0f} s), where "
            "the sentence model would cost more than the run; --embeddings (Python: "
            "diversity_embeddings='always') measures them whatever the run took")
    present = _data_columns(folder)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    by_column: dict[str, dict[str, Any]] = {}  # two stages writing one column: measure it once
    for name, stage in zip(pipeline.stage_names, pipeline.stages, strict=True):
        for generated in stage.generated_columns():
            written, role = column_spec(generated)  # `messages:user`: that role's turns
            column = _where_measured(written, present)
            label = column if role is None else f"{column}:{role}"
            if label not in by_column:
                found = _in_data(column, present)
                texts = texts_of(_answers(folder, column), role) if found else []
                status = _progress(options.progress, name, label, texts, embeddings)
                with status:
                    by_column[label] = measure(texts, embeddings=embeddings,
                                               skipped_because=skipped_because)
                if not found and present:  # with no shard at all, no column is "removed"
                    by_column[label]["embedding_note"] = (
                        "not computed: the column is not in data/ (a later stage removed it)")
            results.setdefault(name, {})[label] = by_column[label]
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


# A list column whose first text a stage also writes as the row's answer (rejection_sample's and
# majority_vote's ``completions``): when a later stage kept only the answer (the quickstart keeps
# ``completion``), the answers are still measured, under the answer's column.
_ANSWER_OF_LIST = {"completions": "completion"}


def _where_measured(column: str, present: set[str]) -> str:
    fallback = _ANSWER_OF_LIST.get(column)
    if not _in_data(column, present) and fallback is not None and _in_data(fallback, present):
        return fallback
    return column


def _in_data(column: str, present: set[str]) -> bool:
    """Whether ``data/`` holds ``column``'s texts (the answer may live in ``messages``)."""
    from stillroom.data.rows import ANSWER_COLUMN

    return column in present or (column == ANSWER_COLUMN and "messages" in present)


def _data_columns(folder: OutputFolder) -> set[str]:
    """The columns of ``data/``'s shards (their schemas only)."""
    return {name for path in folder.shard_paths("data") for name in pq.read_schema(path).names}


def _progress(progress: bool, stage: str, column: str, texts: list[str], embeddings: bool) -> Any:
    """What the terminal shows while a column is measured: a line, and a spinner on stderr while
    the sentence model loads and embeds (seconds), so the end of a run is not a silent wait."""
    from contextlib import nullcontext

    if not progress:
        return nullcontext()
    from rich.console import Console

    from stillroom.report.diversity import MAX_EMBEDDED_TEXTS, MIN_TEXTS

    console = Console(stderr=True)
    console.print(f"measuring diversity of {stage}.{column} ({len(texts):,} texts)",
                  highlight=False)
    embedded = min(len(texts), MAX_EMBEDDED_TEXTS)
    if not embeddings or embedded < MIN_TEXTS:
        return nullcontext()
    return console.status(f"embedding {embedded:,} texts of {stage}.{column} with "
                          "all-MiniLM-L6-v2 (--no-embeddings skips this)")


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
        measure_diversity(folder, pipeline, options, run_seconds=time.time() - started),
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
