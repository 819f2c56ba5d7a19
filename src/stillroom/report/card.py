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
