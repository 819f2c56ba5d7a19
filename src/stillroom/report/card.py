"""The dataset card, ``OUT/README.md``: what was made, how, from what, and what was lost.

Its YAML header lets the Hugging Face Hub (and ``load_dataset(OUT)``) find the Parquet shards.
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


def render_card(summary: dict[str, Any], config: dict[str, Any], columns: list[str]) -> str:
    summary, config, columns = redact_value((summary, config, columns))
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
    parts.append("\n## Models, token use and cost\n")
    backend_configs = config.get("backends") or {}
    costs = {name: cost_of(s, backend_configs.get(name)) for name, s in summary["backends"].items()}
    parts.append(
        _table(
            ["backend", "kind", "model", "requests", "cache hits", "retries", "prompt tokens",
             "completion tokens", "failed requests", "cost"],
            [
                [name, s["kind"], s["model"], s["requests_sent"], s["cache_hits"], s["retries"],
                 s["prompt_tokens"], s["completion_tokens"], s["failed_requests"],
                 "-" if costs[name] is None else f"{costs[name]:,.4f}"]
                for name, s in summary["backends"].items()
            ],
        )
    )
    parts.append(
        "\nTokens count what the backends reported for requests sent in these sessions; answers "
        "served from the request cache are counted under cache hits and cost nothing. Cost uses "
        "each backend's `input_price` and `output_price` (per million tokens) when set.\n"
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
    parts.append("```yaml\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True) + "```\n")
    parts.append(
        "\nLoad it with `datasets.load_dataset(\"parquet\", data_dir=\"data\")`. Rows whose "
        "requests failed are in `failed/` (with `error`, `stage`, `attempts`), rows a filter "
        "removed in `dropped/` (with `drop_reason`, `stage`).\n"
    )
    return "\n".join(parts)
