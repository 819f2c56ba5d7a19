"""The records of an output folder's run state: the run's fingerprint (how a rerun recognizes its
run), sealed commit records (a line edited or damaged in place is found), and what earlier
sessions committed (:class:`RunState`). See :mod:`stillroom.data.output` for the protocol."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from stillroom.secrets import redact_value

KINDS = ("data", "failed", "dropped")


def stored_fingerprint(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A run's fingerprint as ``run.json`` keeps it: as JSON reads it back, with every secret
    redacted (a key in a backend's ``extra_body`` must not land on disk). Compared in this form,
    so a rerun still recognizes its run."""
    return redact_value(orjson.loads(orjson.dumps(fingerprint, default=str)))  # type: ignore[no-any-return]


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """A digest of the whole fingerprint, secrets included: what a rerun is recognized by (the
    redacted copy beside it is for people; redaction depends on the environment)."""
    canonical = orjson.dumps(fingerprint, default=str, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def same_run(previous: dict[str, Any], fingerprint: dict[str, Any]) -> bool:
    if "digest" in previous:
        return bool(previous["digest"] == fingerprint_digest(fingerprint))
    return bool(previous.get("fingerprint") == stored_fingerprint(fingerprint))  # older folders


def check_of(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def sealed(record: dict[str, Any]) -> bytes:
    """A commit record as one line, with a checksum of its content: a line edited or damaged in
    place (a key removed from ``keys``) is then found, not trusted."""
    body = {key: value for key, value in record.items() if key != "check"}
    return orjson.dumps({**body, "check": check_of(body)})


def seal_holds(record: dict[str, Any]) -> bool:
    """Whether a record's checksum matches (records of older stillroom versions have none)."""
    check = record.get("check")
    if check is None:
        return True
    return check == check_of({key: value for key, value in record.items() if key != "check"})


def files_of(record: dict[str, Any]) -> list[str]:
    """The files a commit record names: its shards and its checkpoint."""
    files = list(record.get("files", {}).values())
    if record.get("checkpoint"):
        files.append(record["checkpoint"])
    return files


def committed_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    totals = dict.fromkeys(KINDS, 0)
    for record in records:
        for kind, count in record.get("rows", {}).items():
            totals[kind] = totals.get(kind, 0) + count
    return totals


def latest_sizes(records: list[dict[str, Any]]) -> dict[str, int]:
    """Each committed file's size as last recorded (a shard rewritten to the run's common schema
    at the end gets a record of its new size; see ``harmonize_shards``)."""
    sizes: dict[str, int] = {}
    for record in records:
        sizes.update(record.get("sizes", {}))
    return sizes


@dataclass
class RunState:
    """What earlier sessions of this run committed."""

    done_keys: dict[int, set[str]] = field(default_factory=dict)  # segment -> keys
    checkpoints: dict[int, str] = field(default_factory=dict)  # segment -> checkpoint file
    next_seq: int = 0
    # What the start found damaged and what it did about it, for the user to read.
    notes: list[str] = field(default_factory=list)

    def done(self, segment: int) -> set[str]:
        return self.done_keys.setdefault(segment, set())
