"""Reading ``.stillroom/sessions.jsonl``: one record per session of a run (its status, times,
counts and the figures of its backends and stages), appended when the session ends.

The log is read by the summary behind ``inspect``, the card and the report. Like a damaged line
of the commit log, a line that is not a session record (a torn append, a hand edit: a JSON
list, ``"started": {...}``, ``"spans": 5``) is left out, with a warning naming the file and line,
so one bad line costs that session's figures rather than the whole summary (before, a wrong
type got as far as the summing and ended ``inspect`` with an internal error).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

# (file, line number, line) already warned about: one command reads the log more than once.
_warned: set[tuple[str, int, bytes]] = set()


def read_sessions(path: Path) -> list[dict[str, Any]]:
    """The session records of the log at ``path`` (none when it does not exist)."""
    if not path.exists():
        return []
    out = []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            # A torn last line is a session killed mid-append, not damage worth a warning.
            if any(rest.strip() for rest in lines[number:]):
                _warn(path, number, line, "it is not JSON")
            continue
        problem = session_problem(record)
        if problem:
            _warn(path, number, line, problem)
            continue
        out.append(record)
    return out


def _warn(path: Path, number: int, line: bytes, problem: str) -> None:
    if (str(path), number, line) not in _warned:
        _warned.add((str(path), number, line))
        log.warning("%s line %d is damaged (%s); that session's figures are left out",
                    path, number, problem)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mapping(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return None if value is None or isinstance(value, dict) else f"`{key}` is not a mapping"


def session_problem(record: Any) -> str | None:
    """What makes ``record`` not a session record as the summary reads it, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a session record"
    if not isinstance(record.get("session"), str):
        return "no `session` id"
    for key in ("started", "ended"):
        if record.get(key) is not None and not _number(record[key]):
            return f"`{key}` is not a time"
    for key in ("counts", "executor", "backends", "stages"):
        problem = _mapping(record, key)
        if problem:
            return problem
    for name, stats in (record.get("stages") or {}).items():
        if not isinstance(stats, dict) or not all(_number(v) for v in stats.values()):
            return f"the figures of stage {name!r} are not numbers"
    for name, stats in (record.get("backends") or {}).items():
        problem = _backend_problem(stats)
        if problem:
            return f"backend {name!r}: {problem}"
    return None


def _backend_problem(stats: Any) -> str | None:
    if not isinstance(stats, dict):
        return "its figures are not a mapping"
    for key, value in stats.items():
        if key in ("model", "kind"):
            if value is not None and not isinstance(value, str):
                return f"`{key}` is not text"
        elif key == "errors":
            if not isinstance(value, dict) or not all(_number(v) for v in value.values()):
                return "`errors` is not a count per kind"
        elif key == "spans":
            if not isinstance(value, list) or not all(
                    isinstance(span, list) and len(span) == 2 and all(map(_number, span))
                    for span in value):
                return "`spans` is not a list of [start, end]"
        elif value is not None and not _number(value):
            return f"`{key}` is not a number"
    return None

