"""The dataset card, ``OUT/README.md``: what was made, how, from what, and what was lost.

Its YAML header is ``huggingface_hub``'s :class:`~huggingface_hub.DatasetCardData`, so it holds
the keys the Hub expects: ``configs`` (so the Hub and ``load_dataset(OUT)`` find the Parquet
shards), ``size_categories`` (from the row count, in the Hub's buckets), ``task_categories``,
``tags``, and what only the user knows (``license``, ``language``, ``source_datasets``,
``pretty_name``) from the pipeline file's ``card:`` key. A key nobody set is left out of the
header and the card says it is not set: nothing is guessed. The models that wrote the data have
no field in the Hub's dataset card spec (``base_model`` is a model card key), so they are named in
the card's text. The card ends with a pipeline file that reruns the run (:func:`pipeline_file`)
and how to upload the folder without its private ``.stillroom/`` state (:data:`UPLOAD_IGNORE`).

Nothing secret goes in: backends are described by kind, model and the *name* of their key's
environment variable, never the key, and everything the card quotes (the config, reasons,
warnings) passes :func:`stillroom.secrets.redact_value` first, in case a secret got in anyway.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import yaml

from stillroom.secrets import redact_value
from stillroom.version import __version__


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _count(measures: dict[str, Any]) -> str:
    texts, sampled = measures["texts"], measures["sampled"]
    return f"{texts:,}" if sampled == texts else f"{texts:,} ({sampled:,} sampled)"


def _diversity(diversity: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The diversity table, with why a measure is missing and how to read the numbers."""
    if not diversity:
        return "_No stage of this pipeline writes text with a model._\n"
    rows = []
    notes: dict[str, list[str]] = {}
    similarity = None
    for stage, columns in diversity.items():
        for column, m in columns.items():
            rows.append(
                [stage, column, _count(m), _ratio(m["distinct_1"]), _ratio(m["distinct_2"]),
                 _share(m["exact_duplicate_share"]), _ratio(m["mean_cosine_distance"]),
                 _share(m["near_duplicate_share"])]
            )
            similarity = m.get("near_duplicate_similarity", similarity)
            if m.get("embedding_note"):
                notes.setdefault(m["embedding_note"], []).append(f"`{stage}.{column}`")
    parts = [
        _table(
            ["stage", "column", "texts", "distinct-1", "distinct-2", "exact duplicates",
             "mean cosine distance", "near-duplicates"],
            rows,
        )
    ]
    for note, where in notes.items():
        parts.append(f"\nEmbedding measures for {', '.join(where)}: {note}.\n")
    parts.append(
        "\nMeasured on the non-blank texts in `data/`; a large set is sampled (with a fixed "
        "seed) for all but exact duplicates. Distinct-n (Li et al. 2016): unique word n-grams / "
        "all n-grams, pooled over the set. Exact duplicates: texts whose normalized text occurs "
        "more than once. Mean cosine distance: over all pairs of all-MiniLM-L6-v2 sentence "
        "embeddings. Near-duplicates: texts whose nearest other text has cosine similarity >= "
        f"{similarity}.\n"
    )
    return "".join(parts)


def format_figure(value: Any) -> str:
    """A stage figure for a table: ratios to 3 places, counts with separators."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return str(value)


SECONDS_NOTE = (
    "Wall seconds: from the first request's start to the last answer's end, per session, summed "
    "over sessions (a pause between sessions does not count). Request seconds: every request's "
    "time, summed: with many requests in flight at once it is many times the wall time."
)


def seconds_text(value: float | None) -> str:
    """Seconds to one place; "-" when not measured (a run recorded before wall time was kept)."""
    return "-" if value is None else f"{value:,.1f}"


def stage_result_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One (stage, figure, value) row per figure a stage reported."""
    return [
        [stage, figure, format_figure(value)]
        for stage, figures in results.items()
        for figure, value in figures.items()
    ]


def cost_of(stats: dict[str, Any], backend_config: dict[str, Any] | None) -> float | None:
    """What the tokens sent cost, from the backend's ``input_price``/``output_price`` (per million
    tokens); None when no price is set. Answers from the request cache cost nothing."""
    config = backend_config or {}
    if config.get("input_price") is None and config.get("output_price") is None:
        return None
    return (
        stats.get("prompt_tokens", 0) * (config.get("input_price") or 0.0)
        + stats.get("completion_tokens", 0) * (config.get("output_price") or 0.0)
    ) / 1e6


def has_reasoning(backends: dict[str, dict[str, Any]]) -> bool:
    """Whether any backend counted reasoning tokens (the usage tables then show them)."""
    return any(stats.get("reasoning_tokens", 0) or stats.get("cached_reasoning_tokens", 0)
               for stats in backends.values())


def reasoning_tokens_text(stats: dict[str, Any]) -> str:
    """A backend's reasoning tokens, marked "estimated" when some of them were a share of the
    completion by characters rather than a count (records from before traces: 0)."""
    tokens = int(stats.get("reasoning_tokens", 0) or 0)
    estimated = int(stats.get("estimated_reasoning_tokens", 0) or 0)
    if not estimated:
        return f"{tokens:,}"
    if estimated >= tokens:
        return f"{tokens:,} (estimated)"
    return f"{tokens:,} ({estimated:,} estimated)"


REASONING_NOTE = (
    "Reasoning tokens are the part of completion tokens the models spent on their reasoning "
    "traces (the `reasoning` column); they are billed as output, so the cost already includes "
    "them. An estimated count is the trace's share of the completion by characters, for "
    "servers that return a trace without counting it."
)


def _funnel(summary: dict[str, Any], config: dict[str, Any]) -> str:
    rows = [["input", config.get("rows_read", "-"), "", "", ""]]
    for name, s in summary.get("stages", {}).items():
        rows.append([name, s.get("rows_in", 0), s.get("rows_out", 0), s.get("dropped", 0),
                     s.get("failed", 0)])
    return _table(["stage", "rows in", "rows out", "dropped", "failed"], rows)


def _distributions(distributions: dict[str, Any]) -> str:
    rows = []
    for kind, unit in (("lengths", "words"), ("scores", "")):
        for column, d in (distributions.get(kind) or {}).items():
            rows.append([f"{column}" + (f" ({unit})" if unit else ""), f"{d['n']:,}",
                         f"{d['mean']:,.2f}", f"{d['p10']:,.2f}", f"{d['median']:,.2f}",
                         f"{d['p90']:,.2f}"])
    if not rows:
        return "_No text or score columns in `data/`._\n"
    note = ""
    if distributions.get("rows_read", 0) >= 100_000:
        note = "\nMeasured on the first 100,000 rows.\n"
    return _table(["column", "values", "mean", "p10", "median", "p90"], rows) + note


def _lineage(lineage: list[dict[str, Any]]) -> str:
    if not lineage:
        return "_No stage recorded lineage._\n"

    def listing(counts: dict[str, int]) -> str:
        return "; ".join(f"{name} ({count:,})" for name, count in counts.items()) or "-"

    return _table(
        ["stage", "rows", "method", "models", "prompt templates"],
        [[e["stage"], f"{e['rows']:,}", listing(e["methods"]), listing(e["models"]),
          listing(e["templates"])] for e in lineage],
    )


def mix_rows(mix: list[dict[str, Any]]) -> list[list[str]]:
    """The data mix table: per source, its kind, rows available and taken, target and reached share."""
    return [
        [m["source"], m["kind"], f"{m['available']:,}", f"{m['taken']:,}",
         "all rows" if m["target share"] is None else f"{m['target share']:.1%}", f"{m['share']:.1%}"]
        for m in mix
    ]


MIX_HEADER = ["source", "kind", "available", "taken", "target share", "share"]


def _distillation(distillation: dict[str, Any] | None) -> list[str]:
    """The students trained on this data and how they did on held-out prompts."""
    if not distillation:
        return []
    from stillroom.report import distillation as dist

    parts = ["\n## Distillation\n"]
    evaluation = distillation.get("eval")
    if evaluation:
        parts.append(dist.headline(evaluation) + "\n")
        parts.append(_table(dist.EVAL_HEADER, dist.eval_rows(evaluation)))
        parts.append("\nPer-item outputs and verdicts are in `eval.json`.\n")
    if distillation.get("training"):
        parts.append("\nTraining (the loss curves are in `report.html`):\n")
        parts.append(_table(dist.TRAINING_HEADER, dist.training_rows(distillation["training"])))
    return parts


# The keys of a pipeline file (see stillroom.pipeline.config); the rest of a run's config is
# facts of the run (rows_read, mix, ...), which a pipeline file refuses as unknown keys.
PIPELINE_KEYS = ("name", "description", "seed", "input", "backends", "stages", "card")
# What an upload leaves out: the run's private state (lock, commit log, sessions, completion
# record) and the temporary files of a card being written. Patterns as huggingface_hub's
# upload_folder(ignore_patterns=...) and `hf upload --exclude` match them (fnmatch on the path
# relative to the folder, where `*` also matches `/`).
UPLOAD_IGNORE = [".stillroom/*", "*.tmp"]
# The Hub's size_categories buckets (huggingface_hub.DatasetCardData's docstring).
_SIZE_BUCKETS = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M",
                 "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T"]
# Columns that hold model answers: such data trains text generation.
_ANSWER_COLUMNS = ("completion", "completions", "messages", "chosen")


def size_category(rows: int) -> str:
    """The Hub's size bucket for ``rows`` rows: n<1K, 1K<n<10K, ..., n>1T."""
    index = 0
    while index < len(_SIZE_BUCKETS) and rows >= 1000 * 10**index:
        index += 1
    return _SIZE_BUCKETS[index] if index < len(_SIZE_BUCKETS) else "n>1T"


def pipeline_file(config: dict[str, Any]) -> dict[str, Any]:
    """A pipeline file that reruns the run: the pipeline's own keys of ``config`` (see
    :data:`PIPELINE_KEYS`), with ``input`` as the run read it (``rerun_input``: absolute paths
    and the limit). A config recorded before ``rerun_input`` existed has no input here."""
    out: dict[str, Any] = {}
    for key in PIPELINE_KEYS:
        value = config.get("rerun_input") if key == "input" else config.get(key)
        if value is not None:
            out[key] = value
    return out


def card_data(summary: dict[str, Any], config: dict[str, Any], columns: list[str]) -> Any:
    """The card's YAML header as ``huggingface_hub.DatasetCardData``."""
    from huggingface_hub import DatasetCardData

    card = config.get("card") or {}
    tags = ["synthetic", "stillroom"]
    tags += [tag for tag in card.get("tags") or [] if tag not in tags]
    tasks = card.get("task_categories")
    if tasks is None and any(column in columns for column in _ANSWER_COLUMNS):
        tasks = ["text-generation"]
    return DatasetCardData(
        pretty_name=card.get("pretty_name") or config.get("name"),
        license=card.get("license"),
        license_name=card.get("license_name"),
        license_link=card.get("license_link"),
        language=card.get("language"),
        task_categories=tasks,
        size_categories=[size_category(summary["counts"]["data"])],
        source_datasets=card.get("source_datasets"),
        tags=tags,
        configs=[{"config_name": "default",
                  "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    )


def _about(summary: dict[str, Any], config: dict[str, Any]) -> str:
    """Licence, language and sources as set in ``card:``, or said to be not set; the models
    that answered (as the backends reported them: an embedded model has no ``model:`` key)."""
    card = config.get("card") or {}

    def said(key: str) -> str:
        value = card.get(key)
        if value is None:
            return f"not set (`card: {{{key}: ...}}` in the pipeline file)"
        return ", ".join(value) if isinstance(value, list) else str(value)

    backends = {**(config.get("backends") or {}), **(summary.get("backends") or {})}
    models = sorted({str(b.get("model")) for b in backends.values() if b.get("model")})
    lines = [
        f"- License: {said('license')}",
        f"- Language: {said('language')}",
        f"- Source datasets: {said('source_datasets')}",
        f"- Input: {config.get('input') or 'unknown'}",
        "- Written by: " + (", ".join(f"`{m}`" for m in models) if models else "no pipeline backend")
        + (" (the models' terms of use may bear on how this data may be used)" if models else ""),
    ]
    return "\n".join(lines) + "\n"


def _rerun(config: dict[str, Any]) -> list[str]:
    """The pipeline file that reruns the run, and what stops it from doing so, if anything."""
    text = yaml.safe_dump(pipeline_file(config), sort_keys=False, allow_unicode=True)
    parts = ["```yaml\n" + text + "```\n"]
    if config.get("rerun_problem"):
        parts.append(f"\nThis file does not rerun the run as it stands: {config['rerun_problem']}.\n")
    elif "rerun_input" not in config:
        parts.append("\nThis run was recorded without its input; add `input:` to rerun it.\n")
    elif config.get("rerun_folder"):
        # An option is still read relative to the pipeline's folder: say where to save it.
        parts.append(
            f"\nSaved as `pipeline.yaml` in `{config['rerun_folder']}` (the folder of the "
            "pipeline that made this run: a path in its options is read from there), "
            "`stillroom run pipeline.yaml -o NEW_OUT` runs it again. The run itself read "
            f"{config.get('rows_read', 0):,} rows.\n"
        )
    else:
        parts.append(
            "\nSaved as `pipeline.yaml` anywhere, `stillroom run pipeline.yaml -o NEW_OUT` runs it again "
            "(paths are as on the machine that made it; keys come from environment variables "
            "named under `api_key_env`). The run itself read "
            f"{config.get('rows_read', 0):,} rows.\n"
        )
    return parts


def _upload() -> str:
    excludes = " ".join(f'--exclude "{pattern}"' for pattern in UPLOAD_IGNORE)
    return (
        "`.stillroom/` is this run's private state (lock, commit log, sessions, completion "
        "record): leave it out of an upload. From the folder that holds this card:\n\n"
        "```\n"
        f"hf upload USER/NAME . . --repo-type dataset {excludes}\n"
        "```\n\n"
        "or in Python `huggingface_hub.HfApi().upload_folder(folder_path=\".\", "
        f"repo_id=\"USER/NAME\", repo_type=\"dataset\", ignore_patterns={UPLOAD_IGNORE!r})`. "
        "`failed/` and `dropped/` go along unless excluded too (they hold the prompts of rows "
        "that failed or were filtered out); the Hub reads only `data/`.\n"
    )


def upload_files(root: Any) -> list[str]:
    """The files an upload of the folder ``root`` with :data:`UPLOAD_IGNORE` sends, as
    ``huggingface_hub``'s ``upload_folder`` picks them (every file under the folder, relative
    POSIX paths, filtered by ``filter_repo_objects``), without touching the network."""
    from pathlib import Path

    from huggingface_hub.utils import filter_repo_objects

    folder = Path(root)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
    return list(filter_repo_objects(files, ignore_patterns=UPLOAD_IGNORE))


def render_card(summary: dict[str, Any], config: dict[str, Any], columns: list[str]) -> str:
    summary, config, columns = redact_value((summary, config, columns))
    counts = summary["counts"]
    name = config.get("name") or "stillroom dataset"
    parts = [
        "---\n" + card_data(summary, config, columns).to_yaml() + "\n---\n",
        f"# {name}\n",
        f"Made by stillroom {__version__} on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.\n",
    ]
    if config.get("description"):
        parts.append(f"{config['description']}\n")
    parts.append(_about(summary, config))
    parts.append("## Counts\n")
    parts.append(
        _table(
            ["rows in data/", "failed", "dropped", "failure rate"],
            [[counts["data"], counts["failed"], counts["dropped"], f"{summary['failure_rate']:.2%}"]],
        )
    )
    warnings = summary.get("warnings") or []
    if warnings:
        parts.append("\n## Warnings\n")
        parts.append("".join(f"- {warning}\n" for warning in warnings))
    parts.append("\n## Models, token use and cost\n")
    backend_configs = config.get("backends") or {}
    costs = {name: cost_of(s, backend_configs.get(name)) for name, s in summary["backends"].items()}
    reasoning = has_reasoning(summary["backends"])
    header = ["backend", "kind", "model", "requests", "cache hits", "retries", "prompt tokens",
              "completion tokens", "failed requests", "wall seconds", "request seconds", "cost"]
    if reasoning:
        header.insert(header.index("completion tokens") + 1, "of which reasoning")
    rows = []
    for name, s in summary["backends"].items():
        row = [name, s["kind"], s["model"], s["requests_sent"], s["cache_hits"], s["retries"],
               s["prompt_tokens"], s["completion_tokens"], s["failed_requests"],
               seconds_text(s.get("wall_seconds")), seconds_text(s.get("busy_seconds")),
               "-" if costs[name] is None else f"{costs[name]:,.4f}"]
        if reasoning:
            row.insert(header.index("of which reasoning"), reasoning_tokens_text(s))
        rows.append(row)
    parts.append(_table(header, rows))
    parts.append(
        "\nTokens count what the backends reported for requests sent in these sessions; answers "
        "served from the request cache are counted under cache hits and cost nothing. Cost uses "
        "each backend's `input_price` and `output_price` (per million tokens) when set. "
        + (f"{REASONING_NOTE} " if reasoning else "")
        + f"{SECONDS_NOTE}\n"
    )
    if config.get("mix"):
        parts.append("\n## Data mix\n")
        parts.append(_table(MIX_HEADER, mix_rows(config["mix"])))
        parts.append(
            "\nReal rows are kept whole unless `size` asked for fewer; synthetic rows are added "
            "to them, not put in their place (the model-collapse guard).\n"
        )
    parts.extend(_distillation(summary.get("distillation")))
    parts.append("\n## Funnel\n")
    parts.append(_funnel(summary, config))
    distributions = summary.get("distributions")
    if distributions is not None:
        parts.append("\n## Lengths and scores\n")
        parts.append(_distributions(distributions))
        parts.append("\n## Lineage\n")
        parts.append(_lineage(distributions.get("lineage") or []))
    parts.append("\n## Failures by reason\n")
    parts.append(_table(["stage: error", "rows"], [[k, v] for k, v in summary["failures_by_reason"].items()]))
    parts.append("\n## Drops by reason\n")
    parts.append(_table(["stage: reason", "rows"], [[k, v] for k, v in summary["drops_by_reason"].items()]))
    results = summary.get("stage_results") or {}
    if results:
        parts.append("\n## Stage results\n")
        parts.append(_table(["stage", "figure", "value"], stage_result_rows(results)))
    parts.append("\n## Diversity\n")
    parts.append(_diversity(summary.get("diversity") or {}))
    parts.append("\n## Columns\n")
    parts.append(", ".join(f"`{c}`" for c in columns) + "\n" if columns else "_no rows_\n")
    parts.append("\n## Pipeline\n")
    parts.extend(_rerun(config))
    parts.append(
        "\nLoad it with `datasets.load_dataset(\"parquet\", data_dir=\"data\")`. Rows whose "
        "requests failed are in `failed/` (with `error`, `stage`, `attempts`), rows a filter "
        "removed in `dropped/` (with `drop_reason`, `stage`).\n"
    )
    parts.append("\n## Uploading\n")
    parts.append(_upload())
    return "\n".join(parts)
