"""What a finished output folder holds, in numbers: the source for the card, report and ``inspect``.

Counts and reasons are read from the shards themselves (not from counters kept while running), so
they are right across any number of interrupted and resumed sessions. Diversity measures and
warnings are measured once when a run completes and read back from its completion marker.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import orjson

from stillroom.data.commit_log import KINDS
from stillroom.data.output import OutputFolder
from stillroom.llm.stats import BackendStats
from stillroom.report.distillation import read_distillation
from stillroom.secrets import redact, redact_value

# Past this many distinct reasons, the card and report group them (dropped/ keeps each in full).
MAX_DISTINCT_REASONS = 25
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def reason_kind(reason: str) -> str:
    """A reason without its particulars: what follows " of " (the row or item it names) and the
    numbers in it. "near-duplicate of r17 (jaccard 0.86)" -> "near-duplicate of ..."."""
    head, sep, _ = reason.partition(" of ")
    return _NUMBER.sub("#", head) + (" of ..." if sep else "")


def _reasons(folder: OutputFolder, kind: str, column: str) -> dict[str, int]:
    """Rows per "stage: reason"; when reasons name rows or scores (a dedup drops one row "as a
    duplicate of" each of thousands of others), grouped by :func:`reason_kind` so the table stays
    one line per kind of reason."""
    stages = folder.read_column(kind, "stage")
    reasons = folder.read_column(kind, column)
    counter: Counter[str] = Counter()
    for stage, reason in zip(stages, reasons, strict=False):
        counter[f"{stage}: {reason}"] += 1
    if len(counter) > MAX_DISTINCT_REASONS:
        grouped: Counter[str] = Counter()
        for stage, reason in zip(stages, reasons, strict=False):
            grouped[f"{stage}: {reason_kind(str(reason))}"] += 1
        counter = grouped
    # The card, report and `inspect` show these: each distinct reason is redacted (after
    # counting, so a million dropped rows cost a redaction per distinct reason, not per row).
    redacted: Counter[str] = Counter()
    for reason, count in counter.items():
        redacted[redact(reason)] += count
    return dict(redacted.most_common())


def _session_stats(folder: OutputFolder) -> list[dict[str, Any]]:
    """One stats record per session: its own final record, or, for a session that was killed
    before it could write one, the stats of its last commit."""
    by_session: dict[str, dict[str, Any]] = {}
    for record in folder.read_commits():
        stats = record.get("stats")
        if stats and stats.get("session"):
            by_session[stats["session"]] = {**stats, "status": "killed", "ended": record.get("time")}
    for session in folder.read_sessions():
        by_session[session["session"]] = session
    return list(by_session.values())


def _completion_record(folder: OutputFolder) -> dict[str, Any]:
    """What the run stored when it finished (diversity and warnings are measured only then)."""
    try:
        record = orjson.loads(folder.complete_file.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def summarize(folder: OutputFolder) -> dict[str, Any]:
    counts = {kind: folder.count(kind) for kind in KINDS}
    sessions = _session_stats(folder)
    backends: dict[str, BackendStats] = {}
    stages: dict[str, Counter[str]] = {}
    seconds = 0.0
    for session in sessions:
        for name, stats in (session.get("backends") or {}).items():
            backends.setdefault(name, BackendStats()).add(stats)
        for name, stats in (session.get("stages") or {}).items():
            stages.setdefault(name, Counter()).update(stats)
        if session.get("started") and session.get("ended"):
            seconds += float(session["ended"]) - float(session["started"])
    finished = counts["data"] + counts["failed"]
    record = _completion_record(folder)
    return {
        "counts": counts,
        "failure_rate": counts["failed"] / finished if finished else 0.0,
        "failures_by_reason": _reasons(folder, "failed", "error_type"),
        "drops_by_reason": _reasons(folder, "dropped", "drop_reason"),
        "backends": {name: stats.as_dict() for name, stats in backends.items()},
        "stages": {name: dict(counter) for name, counter in stages.items()},
        "sessions": [
            {
                "session": s.get("session"),
                "status": s.get("status"),
                "started": s.get("started"),
                "ended": s.get("ended"),
                "counts": s.get("counts", {}),
                "executor": (s.get("executor") or {}).get("kind", "local"),
            }
            for s in sessions
        ],
        "seconds": seconds,
        "complete": folder.is_complete(),
        # stage -> column -> measures (see stillroom.report.diversity); empty until complete.
        "diversity": record.get("diversity") or {},
        "warnings": record.get("warnings") or [],
        # stage -> figure -> value (pass@k, mean ratings, win rates); empty until complete.
        "stage_results": record.get("stage_results") or {},
        # Students trained from this data and their evaluation, when the folder holds them.
        "distillation": read_distillation(folder.root),
    }


def failure_examples(folder: OutputFolder, limit: int = 5) -> list[dict[str, Any]]:
    """A few failed rows, reduced to what explains them, with every secret masked (rows written
    before errors were redacted, or by a backend that quoted a key, must not show it again)."""
    out = []
    for row in folder.read_rows("failed", limit=limit):
        out.append({key: row.get(key) for key in ("stage", "error_type", "attempts", "error")})
    return redact_value(out)
