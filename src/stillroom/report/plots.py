"""What the report plots: text lengths, scores, the funnel of rows, and a lineage summary.

The numbers are gathered from ``data/`` at the end of a run (:func:`gather`) and kept in the
summary; :func:`histogram_svg` and :func:`funnel_svg` draw them as inline SVG. A histogram's x axis
is labelled with a few round values (:func:`nice_ticks`: steps of 1, 2 or 5 times a power of
ten), its y axis with counts, and each bar with its count where the count fits.

The plots are drawn by hand rather than with matplotlib or a JavaScript library because the
report must be one self-contained file that opens offline with scripts off, and a histogram or a
row of bars is a few rectangles: a plotting library would add tens of megabytes and seconds of
import to every run for that.
"""

from __future__ import annotations

import html
import math
import numbers
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stillroom.data.output import OutputFolder

# At most this many values per column are read for a plot: enough for a smooth histogram, and a
# million-row run still finishes its report in seconds. The first rows are taken (shards are in
# commit order), which is what a person scanning the data sees first too.
MAX_VALUES = 100_000
BINS = 20

TEXT_COLUMNS = ("prompt", "completion", "reasoning", "chosen", "rejected", "completions", "response", "text")
# Numbers that describe quality rather than identity or position.
SCORE_COLUMNS = (
    "score", "scores", "ratings", "reward", "score_chosen", "score_rejected", "ifd",
    "passed_count", "samples_spent",
)


def _words(value: Any) -> list[int]:
    """Word counts of a text, a list of texts, or TRL conversational messages."""
    if isinstance(value, str):
        return [len(value.split())]
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return [len(value["content"].split())]
    if isinstance(value, list):
        if value and all(isinstance(m, dict) and "content" in m for m in value):
            # A conversation counts as one text: the length of what it says.
            return [sum(len(str(m["content"]).split()) for m in value)]
        return [n for item in value for n in _words(item)]
    return []


def _numbers(value: Any) -> list[float]:
    """Numbers in a value: a number, a list of numbers, or a dict of them (UltraFeedback's
    aspect ratings as text "4" count; "N/A" does not)."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, numbers.Real):
        number = float(value)
        return [number] if math.isfinite(number) else []
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return []
        return [number] if math.isfinite(number) else []
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return []


def describe(values: list[float]) -> dict[str, Any]:
    """Count, mean, quantiles and a histogram of ``values`` (non-empty)."""
    ordered = sorted(values)
    n = len(ordered)

    def quantile(q: float) -> float:
        return ordered[min(n - 1, int(q * n))]

    low, high = ordered[0], ordered[-1]
    integral = all(float(v).is_integer() for v in ordered)
    if integral and high - low + 1 <= BINS:
        edges = [low - 0.5 + i for i in range(int(high - low) + 2)]  # one bin per value
    else:
        width = (high - low) / BINS or 1.0
        edges = [low + i * width for i in range(BINS + 1)]
    counts = [0] * (len(edges) - 1)
    for value in ordered:
        index = min(len(counts) - 1, max(0, int((value - edges[0]) / (edges[1] - edges[0]))))
        counts[index] += 1
    return {
        "n": n,
        "mean": sum(ordered) / n,
        "p10": quantile(0.1),
        "median": quantile(0.5),
        "p90": quantile(0.9),
        "min": low,
        "max": high,
        "edges": edges,
        "counts": counts,
    }


def gather(folder: OutputFolder) -> dict[str, Any]:
    """Length and score distributions and a lineage summary of ``data/``."""
    import pyarrow.parquet as pq

    paths = folder.shard_paths("data")
    names = set(pq.read_schema(paths[0]).names) if paths else set()
    wanted = [c for c in (*TEXT_COLUMNS, *SCORE_COLUMNS, "metadata") if c in names]
    rows: list[dict[str, Any]] = []
    for path in paths:
        table = pq.read_table(path, columns=wanted)
        rows.extend(table.slice(0, MAX_VALUES - len(rows)).to_pylist())
        if len(rows) >= MAX_VALUES:
            break
    lengths: dict[str, Any] = {}
    scores: dict[str, Any] = {}
    for column in TEXT_COLUMNS:
        if column in wanted:
            values = [n for row in rows for n in _words(row.get(column))]
            if values:
                lengths[column] = describe([float(v) for v in values])
    for column in SCORE_COLUMNS:
        if column in wanted:
            found = [n for row in rows for n in _numbers(row.get(column))]
            if found:
                scores[column] = describe(found)
    return {
        "rows_read": len(rows),
        "lengths": lengths,
        "scores": scores,
        "lineage": lineage_summary(rows),
    }


def lineage_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage that left lineage: its method, models and prompt templates, with row counts."""
    by_stage: dict[str, dict[str, Any]] = {}
    for row in rows:
        for stage, entry in (row.get("metadata") or {}).items():
            if not isinstance(entry, dict) or "method" not in entry:
                continue
            info = by_stage.setdefault(
                stage, {"rows": 0, "methods": Counter(), "models": Counter(), "templates": Counter()}
            )
            info["rows"] += 1
            info["methods"][str(entry.get("method"))] += 1
            model = entry.get("model")
            for name in model if isinstance(model, list) else [model]:
                if name:
                    info["models"][str(name)] += 1
            if entry.get("template"):
                info["templates"][str(entry["template"])] += 1
    return [
        {
            "stage": stage,
            "rows": info["rows"],
            "methods": dict(info["methods"].most_common()),
            "models": dict(info["models"].most_common(8)),
            "templates": dict(info["templates"].most_common(8)),
        }
        for stage, info in by_stage.items()
    ]


# -- drawing ----------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:,.2f}"


def nice_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """At most ``most`` round tick values (steps of 1, 2 or 5 times a power of ten) from
    ``low`` to ``high`` inclusive: what a person would write on an axis."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    span = high - low
    for step_power in range(math.floor(math.log10(span / most)) - 1,
                            math.ceil(math.log10(span)) + 2):
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0**step_power
            first = math.ceil(low / step - 1e-9)
            last = math.floor(high / step + 1e-9)
            if last - first + 1 <= most:
                # round() drops float noise (0.30000000000000004) from the labels.
                return [round(index * step, 12) for index in range(first, last + 1)]
    return [low, high]


def tick_labels(ticks: list[float]) -> list[str]:
    """Ticks as text with as many decimals as their step needs (0, 200, 400; 0.2, 0.4)."""
    step = min((b - a for a, b in zip(ticks, ticks[1:], strict=False)), default=1.0) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [f"{tick:,.{decimals}f}" for tick in ticks]


def _text_fits(text: str, width: float, font: float) -> bool:
    return len(text) * font * 0.6 <= width  # about 0.6 em per digit in a sans-serif font


def histogram_svg(title: str, stats: dict[str, Any], unit: str = "") -> str:
    """A labelled histogram: bars with their counts above them (where a count fits its bar;
    every bar has it as a tooltip), an x axis of round values with ticks, a y axis of counts."""
    counts: list[int] = stats["counts"]
    edges: list[float] = stats["edges"]
    width, height, left, bottom, top, right = 380, 172, 48, 44, 30, 12
    plot_w, plot_h = width - left - right, height - bottom - top
    low, high = edges[0], edges[-1]
    peak = max(counts) or 1
    y_ticks = [t for t in nice_ticks(0, peak, 4) if float(t).is_integer()] or [0]
    y_top = max(peak, y_ticks[-1])
    bar_w = plot_w / len(counts)
    base = top + plot_h
    parts = []
    for tick in y_ticks:
        y = base - plot_h * tick / y_top
        parts.append(
            f'<line x1="{left - 3}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
            f'stroke="#e4e4e4"/><text x="{left - 5}" y="{y + 4:.1f}" font-size="10" '
            f'text-anchor="end" class="y-tick">{tick:,.0f}</text>'
        )
    for index, count in enumerate(counts):
        h = plot_h * count / y_top
        x = left + index * bar_w
        label = f"{_fmt(edges[index])}–{_fmt(edges[index + 1])}: {count:,}"
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{base - h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="#4a7dbd"><title>{html.escape(label)}</title></rect>'
        )
        if count and _text_fits(f"{count:,}", bar_w + 2, 9):
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{base - h - 2:.1f}" font-size="9" '
                f'text-anchor="middle" class="count">{count:,}</text>'
            )
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#888"/>')
    x_ticks = nice_ticks(low, high, 7)
    for tick, text in zip(x_ticks, tick_labels(x_ticks), strict=True):
        x = left + plot_w * (tick - low) / (high - low) if high > low else left + plot_w / 2
        parts.append(
            f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#888"/>'
            f'<text x="{x:.1f}" y="{base + 15}" font-size="10" text-anchor="middle" '
            f'class="x-tick">{html.escape(text)}</text>'
        )
    caption = (
        f"n {stats['n']:,} · min {_fmt(stats['min'])} · median {_fmt(stats['median'])} · "
        f"mean {_fmt(stats['mean'])} · max {_fmt(stats['max'])}" + (f" {unit}" if unit else "")
    )
    return (
        f'<figure class="plot"><svg role="img" aria-label="{html.escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f'<text x="{left}" y="14" font-size="13" font-weight="600">{html.escape(title)}</text>'
        + "".join(parts)
        + f'<text x="{left}" y="{height - 4}" font-size="11" fill="#555">{html.escape(caption)}</text>'
        "</svg></figure>"
    )


def funnel_svg(read: int, stages: list[tuple[str, dict[str, Any]]]) -> str:
    """Rows read, then each stage's rows out, with what it dropped and failed, as bars."""
    lines = [("input", read, 0, 0)] + [
        (name, int(s.get("rows_out", 0)), int(s.get("dropped", 0)), int(s.get("failed", 0)))
        for name, s in stages
    ]
    widest = max([read, *(out + dropped + failed for _, out, dropped, failed in lines)]) or 1
    label_w, bar_w, row_h = 170, 420, 24
    height = row_h * len(lines) + 30
    parts = []
    for index, (name, out, dropped, failed) in enumerate(lines):
        y = 8 + index * row_h
        x: float = label_w
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 14}" font-size="12" text-anchor="end">'
            f"{html.escape(name[:24])}</text>"
        )
        for value, colour, what in ((out, "#4a7dbd", "rows out"), (dropped, "#e0a43a", "dropped"),
                                    (failed, "#b3261e", "failed")):
            w = bar_w * value / widest
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                    f'fill="{colour}"><title>{html.escape(f"{name}: {value:,} {what}")}</title></rect>'
                )
            x += w
        note = f"{out:,} out" + (f", {dropped:,} dropped" if dropped else "") + (
            f", {failed:,} failed" if failed else ""
        )
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 14}" font-size="11">{html.escape(note)}</text>')
    legend_y = height - 8
    legend = "".join(
        f'<rect x="{label_w + i * 110}" y="{legend_y - 9}" width="10" height="10" fill="{c}"/>'
        f'<text x="{label_w + i * 110 + 14}" y="{legend_y}" font-size="11">{t}</text>'
        for i, (c, t) in enumerate((("#4a7dbd", "rows out"), ("#e0a43a", "dropped"),
                                    ("#b3261e", "failed")))
    )
    total_w = label_w + bar_w + 160
    return (
        f'<figure class="plot"><svg role="img" aria-label="funnel of rows through the stages" '
        f'viewBox="0 0 {total_w} {height}" width="{total_w}" height="{height}">'
        + "".join(parts) + legend + "</svg></figure>"
    )


def measure_bars_svg(title: str, bars: list[tuple[str, float | None]], low_mark: float) -> str:
    """Horizontal bars on a 0..1 scale, one per column, with a dashed line at ``low_mark`` (the
    collapse threshold): a bar left of the line is a warning. A missing value shows "n/a"."""
    label_w, bar_w, row_h = 220, 300, 22
    height = row_h * len(bars) + 34
    mark_x = label_w + bar_w * low_mark
    parts = [f'<text x="0" y="14" font-size="13" font-weight="600">{html.escape(title)}</text>']
    for index, (label, value) in enumerate(bars):
        y = 24 + index * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 13}" font-size="12" text-anchor="end">'
            f"{html.escape(label[:34])}</text>"
        )
        if value is None:
            parts.append(f'<text x="{label_w}" y="{y + 13}" font-size="11" fill="#777">n/a</text>')
            continue
        colour = "#b3261e" if value < low_mark else "#4a7dbd"
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{bar_w * max(0.0, min(1.0, value)):.1f}" '
            f'height="{row_h - 8}" fill="{colour}"/>'
            f'<text x="{label_w + bar_w + 6}" y="{y + 13}" font-size="11">{value:.3f}</text>'
        )
    parts.append(
        f'<line x1="{mark_x:.1f}" y1="20" x2="{mark_x:.1f}" y2="{height - 6}" stroke="#b3261e" '
        f'stroke-dasharray="4 3"><title>warning below {low_mark:g}</title></line>'
    )
    total_w = label_w + bar_w + 60
    return (
        f'<figure class="plot"><svg role="img" aria-label="{html.escape(title)}" '
        f'viewBox="0 0 {total_w} {height}" width="{total_w}" height="{height}">'
        + "".join(parts) + "</svg></figure>"
    )
