"""How results look in a terminal (rich tables), shared by the verbs."""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stillroom.secrets import redact_value

# Bidirectional controls: an RTL override (U+202E) in a reason makes the terminal show the rest
# of the line reversed, so text that is not what it looks like.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(text: Any) -> str:
    """``text`` with control characters (ESC, NUL, C1) and bidirectional controls written as
    escapes (``\\x1b``, ``\\u202e``): reasons, ids and rows come from models and user data, and
    raw in a terminal they would move the cursor, recolour, or reverse what follows.
    ``--json`` keeps them as they are (JSON escapes them itself)."""
    text = str(text)
    if text.isprintable():  # the common case, and fast
        return text
    return "".join(_escaped(char) for char in text)


def _escaped(char: str) -> str:
    if char in _BIDI or unicodedata.category(char) == "Cc":
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def _cell(text: Any) -> str:
    """A table cell of text from the run: control characters escaped, and rich markup too
    (a reason such as "stages[0] ..." is text, not markup)."""
    return escape(visible(text))


def _counts_table(counts: dict[str, int], failure_rate: float) -> Table:
    table = Table(show_header=True, header_style="bold")
    for name in ("data", "failed", "dropped", "failure rate"):
        table.add_column(name, justify="right")
    table.add_row(
        f"{counts.get('data', 0):,}",
        f"{counts.get('failed', 0):,}",
        f"{counts.get('dropped', 0):,}",
        f"{failure_rate:.2%}",
    )
    return table


def _reasons_table(title: str, reasons: dict[str, int],
                   examples: dict[str, list[str]] | None = None, limit: int = 10) -> Table | None:
    """One line per reason: its rows and, where known, a few of their ids (or shard positions)
    to find them by in failed/ or dropped/."""
    if not reasons:
        return None
    more = len(reasons) - limit
    table = Table(title=title, show_header=True, header_style="bold", title_justify="left",
                  caption=f"... and {more:,} more reasons (stillroom inspect OUT --json lists "
                          "them all)" if more > 0 else None, caption_justify="left")
    table.add_column("stage: reason")
    table.add_column("rows", justify="right")
    if examples is not None:
        table.add_column("example rows")
    for reason, count in list(reasons.items())[:limit]:
        # escape: a reason such as "stages[0] ..." is text, not rich markup.
        cells = [_cell(reason), f"{count:,}"]
        if examples is not None:
            cells.append(_cell(", ".join(str(e) for e in examples.get(reason) or [])))
        table.add_row(*cells)
    return table


def _backends_table(backends: dict[str, dict[str, Any]],
                    costs: dict[str, float | None] | None = None) -> Table | None:
    if not backends:
        return None
    costs = costs or {}
    priced = any(cost is not None for cost in costs.values())
    table = Table(title="backends", show_header=True, header_style="bold", title_justify="left")
    names = ["backend", "model", "requests", "cache hits", "retries", "prompt tok", "completion tok"]
    # Reasoning tokens are a part of the completion tokens (billed as output), shown only when
    # some backend returned traces, so runs without traces keep their table.
    from stillroom.report.card import has_reasoning, reasoning_tokens_text

    reasoning = has_reasoning(backends)
    if reasoning:
        names.append("of which reasoning")
    for name in names + (["cost"] if priced else []):
        table.add_column(name, justify="left" if name in ("backend", "model") else "right")
    for name, stats in backends.items():
        cells = [
            _cell(name), _cell(stats.get("model")), f"{stats.get('requests_sent', 0):,}",
            f"{stats.get('cache_hits', 0):,}", f"{stats.get('retries', 0):,}",
            f"{stats.get('prompt_tokens', 0):,}", f"{stats.get('completion_tokens', 0):,}",
        ]
        if reasoning:
            cells.append(reasoning_tokens_text(stats))
        if priced:
            cost = costs.get(name)
            cells.append("-" if cost is None else f"{cost:,.4f}")
        table.add_row(*cells)
    return table


def total_cost(costs: dict[str, float | None]) -> float | None:
    """The run's cost: the sum over the backends with a price; None when none has one."""
    known = [cost for cost in costs.values() if cost is not None]
    return sum(known) if known else None


def _print_cost(console: Console, costs: dict[str, float | None]) -> None:
    # No price set, no line: a "0" would read as "this run was free".
    cost = total_cost(costs)
    if cost is not None:
        console.print(
            f"estimated cost: {cost:,.4f} (tokens sent, at each backend's input_price and "
            "output_price per million tokens; answers from the request cache cost nothing)",
            highlight=False, markup=False, soft_wrap=True,
        )


def _stages_table(stages: dict[str, dict[str, Any]]) -> Table | None:
    """Rows in, out, dropped and failed per stage, over every session."""
    if not stages:
        return None
    table = Table(title="stages", show_header=True, header_style="bold", title_justify="left")
    for name in ("stage", "rows in", "rows out", "dropped", "failed"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for name, figures in stages.items():
        table.add_row(_cell(name), *(f"{figures.get(key, 0):,}"
                              for key in ("rows_in", "rows_out", "dropped", "failed")))
    return table


def _print_diversity(console: Console, diversity: dict[str, dict[str, dict[str, Any]]]) -> None:
    """What each generation stage's text columns measured (see stillroom.report.diversity)."""
    if not diversity:
        return
    table = Table(title="diversity", show_header=True, header_style="bold", title_justify="left")
    names = ("stage", "column", "texts", "distinct-2", "exact dup", "mean cos dist", "near dup")
    for name in names:
        table.add_column(name, justify="left" if name in ("stage", "column") else "right")
    notes: set[str] = set()
    for stage, columns in diversity.items():
        for column, m in columns.items():
            distance, near = m.get("mean_cosine_distance"), m.get("near_duplicate_share")
            table.add_row(
                _cell(stage), _cell(column), f"{m['texts']:,}",
                "n/a" if m.get("distinct_2") is None else f"{m['distinct_2']:.3f}",
                f"{m['exact_duplicate_share']:.1%}",
                "n/a" if distance is None else f"{distance:.3f}",
                "n/a" if near is None else f"{near:.1%}",
            )
            if m.get("embedding_note"):
                notes.add(m["embedding_note"])
    console.print(table)
    for note in sorted(notes):
        console.print(f"embedding measures {visible(note)}", highlight=False, markup=False)


def show_result(console: Console, result: Any) -> None:
    from stillroom.report.summary import folder_costs

    console.print(f"[bold]{_cell(result.out)}[/]  ({result.seconds:,.1f} s this session)")
    console.print(_counts_table(result.counts, result.failure_rate))
    summary = redact_value(getattr(result, "summary", None) or {})
    # The prices are in the completion record the run has just written.
    costs = folder_costs(result.out, result.backends) if result.backends else {}
    for table in (
        _backends_table(redact_value(result.backends), costs),
        _reasons_table("failures by reason", redact_value(result.failures_by_reason),
                       summary.get("failure_ids_by_reason")),
        _reasons_table("drops by reason", redact_value(result.drops_by_reason),
                       summary.get("drop_ids_by_reason")),
    ):
        if table is not None:
            console.print(table)
    _print_cost(console, costs)
    _print_stage_results(console, summary.get("stage_results") or {})
    _print_diversity(console, summary.get("diversity") or {})


def _print_stage_results(console: Console, results: dict[str, dict[str, Any]]) -> None:
    """Each stage's own figures (pass@k, mean ratings, win rates)."""
    if not results:
        return
    from stillroom.report.card import stage_result_rows

    table = Table(title="stage results", show_header=True, header_style="bold", title_justify="left")
    for name in ("stage", "figure", "value"):
        table.add_column(name, justify="right" if name == "value" else "left")
    for row in stage_result_rows(results):
        table.add_row(*(_cell(cell) for cell in row))
    console.print(table)


def show_inspection(console: Console, folder: Path, summary: dict[str, Any]) -> None:
    # Everything shown is redacted: failed rows' errors, reasons, warnings and the sample rows.
    summary = redact_value(summary)
    state = "complete" if summary["complete"] else "[yellow]incomplete[/] (rerun its command to resume)"
    console.print(f"[bold]{_cell(folder)}[/]: {state}")
    console.print(_counts_table(summary["counts"], summary["failure_rate"]))
    costs = summary.get("costs") or {}
    for table in (
        _stages_table(summary.get("stages") or {}),
        _backends_table(summary["backends"], costs),
        _reasons_table("failures by reason", summary["failures_by_reason"],
                       summary.get("failure_ids_by_reason") or {}),
        _reasons_table("drops by reason", summary["drops_by_reason"],
                       summary.get("drop_ids_by_reason") or {}),
    ):
        if table is not None:
            console.print(table)
    _print_cost(console, costs)
    _print_stage_results(console, summary.get("stage_results") or {})
    _print_diversity(console, summary.get("diversity") or {})
    for warning in summary.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {_cell(warning)}", highlight=False)
    for example in summary.get("failure_examples", [])[:3]:
        text = json.dumps(example, ensure_ascii=False, default=str)[:400]
        console.print(f"[red]failed[/] {_cell(text)}", highlight=False)
    for row in summary["samples"]:
        text = visible(json.dumps(row, ensure_ascii=False, default=str))
        console.print(text if len(text) <= 600 else text[:600] + " ...", highlight=False, markup=False)


def _reason_list(reasons: dict[str, int], examples: dict[str, list[str]]) -> list[dict[str, Any]]:
    return [{"reason": reason, "rows": count, "example_ids": examples.get(reason) or []}
            for reason, count in reasons.items()]


def _finite(value: Any) -> Any:
    """NaN and infinities as null: ``json.dumps`` would write them as bare NaN, not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def inspection_json(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What ``inspect`` shows, as one JSON object with stable keys (listed in ``inspect --help``,
    see INSPECT_JSON_KEYS); every value redacted."""
    summary = redact_value(summary)
    costs = summary.get("costs") or {}
    backends = {name: {**stats, "cost": costs.get(name)}
                for name, stats in (summary.get("backends") or {}).items()}
    document = {
        "folder": str(folder),
        "complete": bool(summary["complete"]),
        "counts": summary["counts"],
        "failure_rate": summary["failure_rate"],
        "seconds": summary.get("seconds", 0.0),
        "stages": summary.get("stages") or {},
        "backends": backends,
        "cost": total_cost(costs),
        "failures_by_reason": _reason_list(summary["failures_by_reason"],
                                           summary.get("failure_ids_by_reason") or {}),
        "drops_by_reason": _reason_list(summary["drops_by_reason"],
                                        summary.get("drop_ids_by_reason") or {}),
        "failure_examples": summary.get("failure_examples") or [],
        "stage_results": summary.get("stage_results") or {},
        "diversity": summary.get("diversity") or {},
        "warnings": summary.get("warnings") or [],
        "distillation": summary.get("distillation"),
        "sessions": summary.get("sessions") or [],
        "samples": summary.get("samples") or [],
    }
    return _finite(json.loads(json.dumps(document, ensure_ascii=False, default=str)))


INSPECT_JSON_KEYS = (
    "folder", "complete", "counts", "failure_rate", "seconds", "stages", "backends", "cost",
    "failures_by_reason", "drops_by_reason", "failure_examples", "stage_results", "diversity",
    "warnings", "distillation", "sessions", "samples",
)
