"""``OUT/report.html``: one self-contained page (no scripts, no network) a person can read.

It shows counts, timings, token use and cost, the funnel of rows through the stages, histograms
of text lengths and scores, each stage's results (pass@k, ratings, win rates), the lineage, the
diversity of generated columns (with collapse warnings), and failures and drops by reason, with a
few example rows. Time is shown two ways, never mixed: wall seconds (how long requests were in
flight) and request seconds (every request's time summed; see :mod:`stillroom.llm.stats`). Long
table cells wrap and a table too wide for the page scrolls inside its own box. Every value from the data is HTML-escaped; plots are inline SVG. Everything
quoted (config, reasons, failed rows' errors, example rows) passes
:func:`stillroom.secrets.redact_value` first, so no key a server echoed ends up on the page.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections import Counter
from typing import Any

from stillroom.llm.stats import wall_of
from stillroom.report.card import (
    MIX_HEADER,
    REASONING_NOTE,
    SECONDS_NOTE,
    cost_of,
    has_reasoning,
    mix_rows,
    reasoning_tokens_text,
    seconds_text,
    stage_result_rows,
)
from stillroom.report.plots import funnel_svg, histogram_svg, measure_bars_svg
from stillroom.secrets import redact_value
from stillroom.version import __version__

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1d2327;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.muted{color:#666}.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.7rem 1rem;min-width:9rem}
.card b{display:block;font-size:1.5rem}.bad{color:#b3261e}.ok{color:#1e7b34}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.5rem 0;font-size:14px}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
td.long{overflow-wrap:anywhere;word-break:break-word;min-width:14rem}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{background:#4a7dbd;height:.8rem;display:inline-block;vertical-align:middle}
figure.plot{display:inline-block;margin:.3rem 1rem .3rem 0}svg text{fill:#1d2327}
pre{background:#f7f7f7;padding:.6rem;overflow:auto;max-height:16rem;font-size:12.5px;white-space:pre-wrap;
overflow-wrap:anywhere}svg{max-width:100%;height:auto}
"""


# A cell longer than this may break anywhere (a model path, a template id): it wraps instead of
# widening its table. Shorter cells break only between words, and a table still wider than the
# page scrolls inside its box.
LONG_CELL = 40


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{_num(c)}</td>' if i in numeric
            else f'<td class="long">{_e(c)}</td>' if len(str(c)) > LONG_CELL
            else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    # Long cells wrap (the CSS breaks even unbroken text); a table still too wide for the page
    # scrolls inside its box instead of pushing the page wider.
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _reason_table(reasons: dict[str, int], total: int) -> str:
    rows = []
    for reason, count in reasons.items():
        width = int(200 * count / total) if total else 0
        rows.append(
            f'<tr><td class="long">{_e(reason)}</td><td class="n">{count:,}</td>'
            f'<td><span class="bar" style="width:{width}px"></span></td></tr>'
        )
    if not rows:
        return '<p class="muted">none</p>'
    return ('<div class="scroll"><table><tr><th>stage: reason</th><th>rows</th><th></th></tr>'
            f'{"".join(rows)}</table></div>')


def stage_wall_seconds(summary: dict[str, Any], config: dict[str, Any]) -> dict[str, float | None]:
    """Wall seconds per stage, where they can be told apart: the union of the spans (see
    :mod:`stillroom.llm.stats`) of the backends a stage uses when no other stage uses them. The
    executor times rows, not stages, so a stage sharing a backend (or using none) gets none."""
    uses = config.get("stage_backends") or {}
    users = Counter(name for names in uses.values() for name in names)
    walls: dict[str, float | None] = {}
    for stage, names in uses.items():
        if names and all(users[name] == 1 for name in names):
            spans = [span for name in names
                     for span in (summary["backends"].get(name) or {}).get("spans") or []]
            walls[stage] = wall_of(spans)
    return walls


def _cost_text(cost: float | None) -> str:
    return "-" if cost is None else f"{cost:,.4f}"


def _distribution_sections(distributions: dict[str, Any] | None) -> list[str]:
    """Histograms of text lengths and scores, and the lineage table."""
    if distributions is None:
        return []
    out = ["<h2>Lengths</h2>"]
    lengths = distributions.get("lengths") or {}
    out.append(
        "".join(histogram_svg(f"{column} (words)", d, "words") for column, d in lengths.items())
        or '<p class="muted">no text columns</p>'
    )
    scores = distributions.get("scores") or {}
    if scores:
        out.append("<h2>Scores</h2>")
        out.append("".join(histogram_svg(column, d) for column, d in scores.items()))
    if distributions.get("rows_read", 0) >= 100_000:
        out.append('<p class="muted">Measured on the first 100,000 rows of data/.</p>')
    lineage = distributions.get("lineage") or []
    out.append("<h2>Lineage</h2>")

    def listing(counts: dict[str, int]) -> str:
        return "; ".join(f"{name} ({count:,})" for name, count in counts.items()) or "-"

    out.append(
        _table(
            ["stage", "rows", "method", "models", "prompt templates"],
            [[e["stage"], e["rows"], listing(e["methods"]), listing(e["models"]),
              listing(e["templates"])] for e in lineage],
            numeric={1},
        )
    )
    return out


def _diversity_section(diversity: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The diversity table; a missing measure shows why it is missing."""
    if not diversity:
        return '<p class="muted">no stage of this pipeline writes text with a model</p>'

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    rows = []
    notes: dict[str, list[str]] = {}
    similarity = None
    for stage, columns in diversity.items():
        for column, m in columns.items():
            texts = f"{m['texts']:,}"
            if m["sampled"] != m["texts"]:
                texts += f" ({m['sampled']:,} sampled)"
            rows.append(
                [stage, column, texts, ratio(m["distinct_1"]), ratio(m["distinct_2"]),
                 share(m["exact_duplicate_share"]), ratio(m["mean_cosine_distance"]),
                 share(m["near_duplicate_share"])]
            )
            similarity = m.get("near_duplicate_similarity", similarity)
            if m.get("embedding_note"):
                notes.setdefault(m["embedding_note"], []).append(f"{stage}.{column}")
    from stillroom.report.diversity import DISTINCT_2_MIN, MEAN_COSINE_DISTANCE_MIN

    labels = [(f"{stage}.{column}", m) for stage, columns in diversity.items()
              for column, m in columns.items()]
    plots = measure_bars_svg(
        "distinct-2", [(label, m["distinct_2"]) for label, m in labels], DISTINCT_2_MIN
    ) + measure_bars_svg(
        "mean cosine distance",
        [(label, m["mean_cosine_distance"]) for label, m in labels],
        MEAN_COSINE_DISTANCE_MIN,
    )
    parts = [
        plots,
        _table(["stage", "column", "texts", "distinct-1", "distinct-2", "exact duplicates",
                "mean cosine distance", "near-duplicates"], rows, numeric={3, 4, 5, 6, 7})
    ]
    for note, where in notes.items():
        parts.append(
            f'<p class="muted">Embedding measures for {_e(", ".join(where))}: {_e(note)}</p>'
        )
    parts.append(
        '<p class="muted">Measured on the non-blank texts in data/; a large set is sampled '
        "(fixed seed) for all but exact duplicates. Distinct-n (Li et al. 2016): unique word "
        "n-grams / all n-grams, pooled over the set. Mean cosine distance: over all pairs of "
        "all-MiniLM-L6-v2 sentence embeddings. Near-duplicates: texts whose nearest other text "
        f"has cosine similarity &gt;= {_e(similarity)}.</p>"
    )
    return "".join(parts)


def _distillation_section(distillation: dict[str, Any] | None) -> list[str]:
    """Held-out results of the students trained on this data, and their loss curves."""
    if not distillation:
        return []
    from stillroom.report import distillation as dist

    parts = ["<h2>Distillation</h2>"]
    evaluation = distillation.get("eval")
    if evaluation:
        parts.append(f"<p>{_e(dist.headline(evaluation))}</p>")
        parts.append(_table(dist.EVAL_HEADER, dist.eval_rows(evaluation)))
    for record in distillation.get("training") or []:
        parts.append(_table(dist.TRAINING_HEADER, dist.training_rows([record])))
        parts.append(dist.line_svg(f"training loss: {record.get('folder', '')}",
                                   dist.loss_series(record)))
    return parts


def render_report(
    summary: dict[str, Any],
    config: dict[str, Any],
    samples: list[dict[str, Any]],
    failures: list[dict[str, Any]],
) -> str:
    summary, config, samples, failures = redact_value((summary, config, samples, failures))
    counts = summary["counts"]
    total = sum(counts.values())
    seconds = summary["seconds"]
    rate = summary["failure_rate"]
    title = config.get("name") or "stillroom run"
    cards = [
        ("rows in data/", f"{counts['data']:,}", ""),
        ("failed", f"{counts['failed']:,}", "bad" if counts["failed"] else "ok"),
        ("dropped", f"{counts['dropped']:,}", ""),
        ("failure rate", f"{rate:.2%}", "bad" if rate else "ok"),
        ("wall time", f"{seconds:,.1f} s", ""),
        ("sessions", f"{len(summary['sessions'])}", ""),
    ]
    reasoning = has_reasoning(summary["backends"])
    backend_header = [
        "backend", "kind", "model", "requests", "cache hits", "retries", "failed requests",
        "prompt tokens", "completion tokens", "completion tok/s", "wall seconds",
        "request seconds", "mean in flight", "mean latency s", "errors by kind", "cost"]
    backend_numeric = set(range(3, 14))
    if reasoning:  # beside completion tokens, of which they are a part
        backend_header.insert(9, "of which reasoning")
        backend_numeric = {*range(3, 9), *range(10, 15)}
    backend_rows = []
    for name, s in summary["backends"].items():
        busy = s.get("busy_seconds") or 0.0
        wall = s.get("wall_seconds")
        backend_rows.append(
            [
                name, s["kind"], s["model"], s["requests_sent"], s["cache_hits"], s["retries"],
                s["failed_requests"], s["prompt_tokens"], s["completion_tokens"],
                *([reasoning_tokens_text(s)] if reasoning else []),
                s["completion_tokens"] / seconds if seconds else 0.0,
                seconds_text(wall), seconds_text(busy),
                busy / wall if wall else "-",
                busy / s["responses"] if s["responses"] else 0.0,
                ", ".join(f"{k}: {v}" for k, v in (s.get("errors") or {}).items()) or "-",
                _cost_text(cost_of(s, (config.get("backends") or {}).get(name))),
            ]
        )
    walls = stage_wall_seconds(summary, config)
    stage_rows = [
        [name, s.get("rows_in", 0), s.get("rows_out", 0), s.get("dropped", 0), s.get("failed", 0),
         seconds_text(walls.get(name)), s.get("seconds", 0.0)]
        for name, s in summary["stages"].items()
    ]
    session_rows = []
    for session in summary["sessions"]:
        started = session.get("started")
        ended = session.get("ended")
        when = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if started else "?"
        session_rows.append(
            [session.get("session"), session.get("status"), when,
             (ended - started) if started and ended else 0.0,
             ", ".join(f"{k}: {v}" for k, v in (session.get("counts") or {}).items()) or "-"]
        )
    sample_html = "".join(
        f"<pre>{_e(json.dumps(row, ensure_ascii=False, indent=1, default=str)[:3000])}</pre>"
        for row in samples
    ) or '<p class="muted">no rows</p>'
    failure_html = _table(
        ["stage", "error type", "attempts", "error"],
        [[f["stage"], f["error_type"], f["attempts"], f["error"]] for f in failures],
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">stillroom {_e(__version__)} · report written '
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} · "
        f"{'complete' if summary.get('complete', True) else 'incomplete'}</p>",
        '<div class="cards">'
        + "".join(f'<div class="card {cls}">{_e(label)}<b>{_e(value)}</b></div>' for label, value, cls in cards)
        + "</div>",
        f"<p>{total:,} rows written in all.</p>",
        "".join(f'<p class="bad">warning: {_e(w)}</p>' for w in summary.get("warnings") or []),
        "<h2>Backends: requests and tokens</h2>",
        _table(backend_header, backend_rows, numeric=backend_numeric),
        # The note is Markdown for the card; its code marks mean nothing here.
        f'<p class="muted">{_e(REASONING_NOTE.replace("`", "")) + " " if reasoning else ""}'
        f"{_e(SECONDS_NOTE)} "
        "Mean in flight: request seconds / wall seconds.</p>"
        if backend_rows else "",
        *(["<h2>Data mix</h2>", _table(MIX_HEADER, mix_rows(config["mix"]))]
          if config.get("mix") else []),
        *_distillation_section(summary.get("distillation")),
        "<h2>Stages</h2>",
        funnel_svg(int(config.get("rows_read") or 0), list(summary["stages"].items())),
        _table(["stage", "rows in", "rows out", "dropped", "failed", "wall seconds",
                "row seconds (summed)"], stage_rows, numeric={1, 2, 3, 4, 5, 6}),
        '<p class="muted">Wall seconds: the wall seconds of the backends only this stage uses '
        "(see above); - where the stage shares its backend or uses none. Row seconds: the time "
        "each row spent in the stage, summed over rows, so rows processed at once add up: not "
        "the time the stage took.</p>",
        *_distribution_sections(summary.get("distributions")),
        *(
            ["<h2>Stage results</h2>",
             _table(["stage", "figure", "value"],
                    stage_result_rows(summary.get("stage_results") or {}))]
            if summary.get("stage_results") else []
        ),
        "<h2>Diversity</h2>",
        _diversity_section(summary.get("diversity") or {}),
        "<h2>Failures by reason</h2>",
        _reason_table(summary["failures_by_reason"], counts["failed"]),
        failure_html if failures else "",
        "<h2>Drops by reason</h2>",
        _reason_table(summary["drops_by_reason"], counts["dropped"]),
        "<h2>Sessions</h2>",
        _table(["session", "status", "started (UTC)", "seconds", "rows"], session_rows, numeric={3}),
        "<h2>Example rows</h2>",
        sample_html,
        "<h2>Pipeline</h2>",
        f"<pre>{_e(json.dumps(config, indent=2, ensure_ascii=False, default=str))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
