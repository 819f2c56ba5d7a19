"""What a finished output folder holds, in numbers: the source for the card, report and ``inspect``.

Counts and reasons are read from the shards themselves (not from counters kept while running), so
they are right across any number of interrupted and resumed sessions. Diversity measures and
warnings are measured once when a run completes and read back from its completion marker.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
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


# Row ids shown per reason (by `inspect` and at the end of a run), so a user can find the rows.
EXAMPLES_PER_REASON = 3


def _reason_entries(folder: OutputFolder, kind: str, column: str) -> Iterator[tuple[Any, Any, str]]:
    """(stage, reason, where) for every row of ``kind``, a shard at a time; ``where`` is the
    row's ``id`` as the folder stores it, or, for a row without one, its shard and position
    (``dropped/part-00000.parquet row 3``), which is also enough to find it."""
    import pyarrow.parquet as pq

    for path in folder.shard_paths(kind):
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        wanted = [name for name in ("stage", column, "id") if name in names]
        table = parquet.read(columns=wanted) if wanted else None
        # Read per shard, not per folder: a shard without a column must not shift the rest.
        columns = [table.column(name).to_pylist() if table is not None and name in wanted
                   else [None] * parquet.metadata.num_rows for name in ("stage", column, "id")]
        for position, (stage, reason, row_id) in enumerate(zip(*columns, strict=True)):
            yield stage, reason, (str(row_id) if row_id is not None
                                  else f"{kind}/{path.name} row {position}")


def _reasons(folder: OutputFolder, kind: str, column: str) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Rows per "stage: reason", and the ids of the first few rows of each reason; when reasons
    name rows or scores (a dedup drops one row "as a duplicate of" each of thousands of others),
    grouped by :func:`reason_kind` so the table stays one line per kind of reason."""
    counter: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for stage, reason, where in _reason_entries(folder, kind, column):
        key = f"{stage}: {reason}"
        counter[key] += 1
        shown = examples.setdefault(key, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(where)
    if len(counter) > MAX_DISTINCT_REASONS:
        # A kind's examples are those of its first reasons (a few rows of it, if not its very
        # first three).
        grouped: Counter[str] = Counter()
        grouped_examples: dict[str, list[str]] = {}
        for key, count in counter.items():
            stage, _, reason = key.partition(": ")
            kind_key = f"{stage}: {reason_kind(reason)}"
            grouped[kind_key] += count
            shown = grouped_examples.setdefault(kind_key, [])
            shown.extend(examples[key][:EXAMPLES_PER_REASON - len(shown)])
        counter, examples = grouped, grouped_examples
    # The card, report and `inspect` show these: each distinct reason (and each example id) is
    # redacted (after counting, so a million dropped rows cost a redaction per distinct reason,
    # not per row).
    redacted: Counter[str] = Counter()
    redacted_examples: dict[str, list[str]] = {}
    for reason, count in counter.items():
        key = redact(reason)
        redacted[key] += count
        shown = redacted_examples.setdefault(key, [])
        shown.extend(redact(where) for where in examples[reason][:EXAMPLES_PER_REASON - len(shown)])
    ordered = dict(redacted.most_common())
    return ordered, {reason: redacted_examples[reason] for reason in ordered}


def backend_costs(backends: dict[str, dict[str, Any]],
                  config: dict[str, Any] | None) -> dict[str, float | None]:
    """What each backend's tokens cost, from the run config's ``input_price``/``output_price``
    (see :func:`stillroom.report.card.cost_of`); None for a backend with no price set."""
    from stillroom.report.card import cost_of

    configs = (config or {}).get("backends") or {}
    return {name: cost_of(stats, configs.get(name)) for name, stats in backends.items()}


def folder_costs(root: Any, backends: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """:func:`backend_costs` with the config a finished run stored in ``root`` (all None for a
    run that is not finished: its prices are kept only in its completion record)."""
    return backend_costs(backends, _completion_record(OutputFolder(root)).get("config"))


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
    failures, failure_ids = _reasons(folder, "failed", "error_type")
    drops, drop_ids = _reasons(folder, "dropped", "drop_reason")
    backend_stats = {name: stats.as_dict() for name, stats in backends.items()}
    return {
        "counts": counts,
        "failure_rate": counts["failed"] / finished if finished else 0.0,
        "failures_by_reason": failures,
        "drops_by_reason": drops,
        # reason -> the ids of its first few rows (see _reason_entries), keyed as above.
        "failure_ids_by_reason": failure_ids,
        "drop_ids_by_reason": drop_ids,
        "backends": backend_stats,
        # backend -> cost (None: no price set); known once the run is complete (the prices are
        # in its completion record's config).
        "costs": backend_costs(backend_stats, record.get("config")),
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
        out.append({key: row.get(key) for key in ("id", "stage", "error_type", "attempts", "error")})
    return redact_value(out)
