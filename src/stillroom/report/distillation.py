"""The distillation part of a card and report: what was trained on the data and how the student
did on held-out prompts.

A run folder may hold, beside its data, the training runs made from it (any
``*/final/stillroom_train.json``, e.g. ``OUT/student/final``) and an ``eval.json`` written by
``stillroom eval`` or the quickstart. :func:`read_distillation` gathers them into the summary;
the card shows tables, the report adds the loss curves (:func:`line_svg`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from stillroom.report.plots import _fmt

EVAL_FILE = "eval.json"
TRAIN_RECORD = "stillroom_train.json"
ROLES = ("baseline", "student", "teacher")


def read_distillation(root: Path) -> dict[str, Any] | None:
    """``{"training": [records], "eval": {...}}`` from the folder, or None when it has neither."""
    training = []
    for path in sorted(root.glob(f"*/final/{TRAIN_RECORD}")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        record["folder"] = str(path.parent.relative_to(root))
        training.append(record)
    evaluation = None
    eval_path = root / EVAL_FILE
    if eval_path.exists():
        try:
            evaluation = json.loads(eval_path.read_text(encoding="utf-8"))
        except ValueError:
            evaluation = None
    if not training and evaluation is None:
        return None
    return {"training": training, "eval": evaluation}


def training_rows(training: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [record.get("folder", "?"), str(record.get("recipe", "sft")), f"{record.get('rows', 0):,}",
         str(record.get("steps", "?")), _maybe(record.get("first_loss")),
         _maybe(record.get("final_loss")), _maybe(record.get("train_seconds"))]
        for record in training
    ]


TRAINING_HEADER = ["model", "recipe", "rows", "steps", "first loss", "final loss", "seconds"]


def eval_rows(evaluation: dict[str, Any]) -> list[list[str]]:
    """One line per evaluated model: its role, accuracy (with interval) and perplexity."""
    models = evaluation.get("models") or {}
    roles = {evaluation.get("roles", {}).get(role, role): role for role in ROLES}
    out = []
    for name, details in models.items():
        interval = details.get("accuracy_ci") or details.get("ci")
        out.append([
            name, roles.get(name, ""), _maybe(details.get("accuracy")),
            f"{_fmt(interval[0])}–{_fmt(interval[1])}" if interval else "-",
            _maybe(details.get("perplexity")),
        ])
    if not out:  # only the headline numbers
        out = [[role, role, _maybe(evaluation.get(role)), "-", "-"] for role in ROLES
               if role in evaluation]
    return out


EVAL_HEADER = ["model", "role", "accuracy", "95% interval", "perplexity of held-out answers"]


def headline(evaluation: dict[str, Any]) -> str:
    """One sentence: the metric, n, before and after, the teacher, and the paired test."""
    test = evaluation.get("paired_test") or {}
    opening = f"{evaluation.get('metric', 'accuracy')} on {evaluation.get('n', '?')} held-out prompts: "
    models = evaluation.get("models") or {}
    if evaluation.get("student") is None and models:
        # Models named other than baseline/student/teacher (on_policy, off_policy...): each one.
        parts = [opening + ", ".join(f"{name} {_maybe(details.get('accuracy'))}"
                                     for name, details in models.items()) + "."]
    else:
        parts = [
            opening + f"baseline {_maybe(evaluation.get('baseline'))} → student "
            f"{_maybe(evaluation.get('student'))} (teacher {_maybe(evaluation.get('teacher'))})."
        ]
    if test.get("p_value") is not None:
        # b counts the items only the first of the two models got right, c the second's.
        first, second = (test.get("models") or ["the first model", "the second"])[:2]
        parts.append(
            f" Paired test ({test.get('method', 'McNemar exact')}): p = {test['p_value']:.3g}"
            + (f", {test['b']} items only {first} got right, {test['c']} only {second}"
               if "b" in test and "c" in test else "") + "."
        )
    return "".join(parts)


def _maybe(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _fmt(value)
    return str(value)


COLOURS = ("#4a7dbd", "#e0a43a", "#2e8b57", "#b3261e", "#7b5ea7")


def line_svg(title: str, series: dict[str, list[list[float]]]) -> str:
    """Lines of ``[x, y]`` points on shared axes (the loss curves), with a legend."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    width, height, left, bottom, top = 480, 200, 52, 34, 24
    plot_w, plot_h = width - left - 12, height - bottom - top
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    x_span, y_span = (x_high - x_low) or 1, (y_high - y_low) or 1

    def at(point: list[float]) -> str:
        x = left + plot_w * (point[0] - x_low) / x_span
        y = top + plot_h * (1 - (point[1] - y_low) / y_span)
        return f"{x:.1f},{y:.1f}"

    lines, legend = [], []
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                     f'points="{" ".join(at(p) for p in values)}"><title>{html.escape(name)}</title>'
                     "</polyline>")
        legend.append(f'<text x="{left + 8 + index * 150}" y="{top + 12}" font-size="11" '
                      f'fill="{colour}">{html.escape(name[:22])}</text>')
    return (
        f'<figure class="plot"><svg role="img" aria-label="{html.escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f'<text x="{left}" y="14" font-size="13" font-weight="600">{html.escape(title)}</text>'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>'
        + "".join(lines) + "".join(legend)
        + f'<text x="{left - 4}" y="{top + 10}" font-size="11" text-anchor="end">{_fmt(y_high)}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="11" text-anchor="end">{_fmt(y_low)}</text>'
        f'<text x="{left}" y="{top + plot_h + 14}" font-size="11">step {_fmt(x_low)}</text>'
        f'<text x="{left + plot_w}" y="{top + plot_h + 14}" font-size="11" text-anchor="end">'
        f"{_fmt(x_high)}</text></svg></figure>"
    )


def loss_series(record: dict[str, Any]) -> dict[str, list[list[float]]]:
    """The curves a training record holds: the loss, and its parts when the recipe logs them."""
    series = {}
    for key in ("losses", "ce_losses", "kd_losses"):
        if record.get(key):
            series[key.removesuffix("es").replace("_loss", "") or "loss"] = record[key]
    return series
