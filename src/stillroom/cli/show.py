"""How results look in a terminal (rich tables), shared by the verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stillroom.secrets import redact_value


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


def _reasons_table(title: str, reasons: dict[str, int], limit: int = 10) -> Table | None:
    if not reasons:
        return None
    table = Table(title=title, show_header=True, header_style="bold", title_justify="left")
    table.add_column("stage: reason")
    table.add_column("rows", justify="right")
    for reason, count in list(reasons.items())[:limit]:
        table.add_row(reason, f"{count:,}")
    return table


def _backends_table(backends: dict[str, dict[str, Any]]) -> Table | None:
    if not backends:
        return None
    table = Table(title="backends", show_header=True, header_style="bold", title_justify="left")
    for name in ("backend", "model", "requests", "cache hits", "retries", "prompt tok", "completion tok"):
        table.add_column(name, justify="left" if name in ("backend", "model") else "right")
    for name, stats in backends.items():
        table.add_row(
            name, str(stats.get("model")), f"{stats.get('requests_sent', 0):,}",
            f"{stats.get('cache_hits', 0):,}", f"{stats.get('retries', 0):,}",
            f"{stats.get('prompt_tokens', 0):,}", f"{stats.get('completion_tokens', 0):,}",
        )
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
                stage, column, f"{m['texts']:,}",
                "n/a" if m.get("distinct_2") is None else f"{m['distinct_2']:.3f}",
                f"{m['exact_duplicate_share']:.1%}",
                "n/a" if distance is None else f"{distance:.3f}",
                "n/a" if near is None else f"{near:.1%}",
            )
            if m.get("embedding_note"):
                notes.add(m["embedding_note"])
    console.print(table)
    for note in sorted(notes):
        console.print(f"embedding measures {note}", highlight=False, markup=False)


def show_result(console: Console, result: Any) -> None:
    console.print(f"[bold]{escape(str(result.out))}[/]  ({result.seconds:,.1f} s this session)")
    console.print(_counts_table(result.counts, result.failure_rate))
    for table in (
        _backends_table(redact_value(result.backends)),
        _reasons_table("failures by reason", redact_value(result.failures_by_reason)),
        _reasons_table("drops by reason", redact_value(result.drops_by_reason)),
    ):
        if table is not None:
            console.print(table)
    summary = redact_value(getattr(result, "summary", None) or {})
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
        table.add_row(*row)
    console.print(table)


def show_inspection(console: Console, folder: Path, summary: dict[str, Any]) -> None:
    # Everything shown is redacted: failed rows' errors, reasons, warnings and the sample rows.
    summary = redact_value(summary)
    state = "complete" if summary["complete"] else "[yellow]incomplete[/] (rerun its command to resume)"
    console.print(f"[bold]{escape(str(folder))}[/]: {state}")
    console.print(_counts_table(summary["counts"], summary["failure_rate"]))
    for table in (
        _backends_table(summary["backends"]),
        _reasons_table("failures by reason", summary["failures_by_reason"]),
        _reasons_table("drops by reason", summary["drops_by_reason"]),
    ):
        if table is not None:
            console.print(table)
    _print_stage_results(console, summary.get("stage_results") or {})
    _print_diversity(console, summary.get("diversity") or {})
    for warning in summary.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    for example in summary.get("failure_examples", [])[:3]:
        text = json.dumps(example, ensure_ascii=False, default=str)[:400]
        console.print(f"[red]failed[/] {escape(text)}", highlight=False)
    for row in summary["samples"]:
        text = json.dumps(row, ensure_ascii=False, default=str)
        console.print(text if len(text) <= 600 else text[:600] + " ...", highlight=False, markup=False)
