"""The dataset card, ``OUT/README.md``: what was made, how, from what, and what was lost.

Its YAML header lets the Hugging Face Hub (and ``load_dataset(OUT)``) find the Parquet shards.
Nothing secret goes in: backends are described by kind, model and the *name* of their key's
environment variable, never the key.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import yaml

from stillroom import __version__


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


def stage_result_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One (stage, figure, value) row per figure a stage reported."""
    return [
        [stage, figure, format_figure(value)]
        for stage, figures in results.items()
        for figure, value in figures.items()
    ]


def render_card(summary: dict[str, Any], config: dict[str, Any], columns: list[str]) -> str:
    counts = summary["counts"]
    header = {
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}
        ],
        "tags": ["synthetic", "stillroom"],
    }
    name = config.get("name") or "stillroom dataset"
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n",
        f"# {name}\n",
        f"Made by stillroom {__version__} on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.\n",
    ]
    if config.get("description"):
        parts.append(f"{config['description']}\n")
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
    parts.append("\n## Models and token use\n")
    parts.append(
        _table(
            ["backend", "kind", "model", "requests", "cache hits", "retries", "prompt tokens",
             "completion tokens", "failed requests"],
            [
                [name, s["kind"], s["model"], s["requests_sent"], s["cache_hits"], s["retries"],
                 s["prompt_tokens"], s["completion_tokens"], s["failed_requests"]]
                for name, s in summary["backends"].items()
            ],
        )
    )
    parts.append(
        "\nTokens count what the backends reported for requests sent in these sessions; answers "
        "served from the request cache are counted under cache hits.\n"
    )
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
    parts.append("```yaml\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True) + "```\n")
    parts.append(
        "\nLoad it with `datasets.load_dataset(\"parquet\", data_dir=\"data\")`. Rows whose "
        "requests failed are in `failed/` (with `error`, `stage`, `attempts`), rows a filter "
        "removed in `dropped/` (with `drop_reason`, `stage`).\n"
    )
    return "\n".join(parts)
