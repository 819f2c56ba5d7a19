"""Crash-safe request cache: every response is durable the moment it arrives.

SQLite in WAL mode with one autocommit transaction per response: a ``kill -9`` right after a
response arrived still finds it on the next run, so a rerun resends nothing already answered.
``synchronous=NORMAL`` survives any process crash (the OS holds the WAL); only a power cut can lose
the last few commits, which would then simply be asked again. Several processes (Ray workers) may
share one file: WAL lets readers and one writer proceed together, and ``busy_timeout`` queues
writers.

The key is a hash of what was asked (backend, model, messages or prompt, parameters, sample index)
and nothing else: no API key, no URL, and not the code that will parse the answer, so changing a
parser reuses responses already paid for.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from stillroom.llm.types import Request

CACHE_ENV_VAR = "STILLROOM_CACHE_DIR"


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stillroom"


def request_key(identity: dict[str, Any], request: Request) -> str:
    payload: dict[str, Any] = {
        "id": identity,
        "params": request.params.as_dict(),
        "sample": request.sample,
    }
    if request.messages is not None:
        payload["messages"] = request.messages
    else:
        payload["prompt"] = request.prompt
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class RequestCache:
    """A key -> response store. Safe to use from several threads and processes."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection guarded by a lock: the event loop thread does nearly all the work, and a
        # second thread (a Ray actor's, a test's) must not interleave statements on it.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
            " WITHOUT ROWID"
        )

    @classmethod
    def in_dir(cls, directory: str | os.PathLike[str] | None = None) -> RequestCache:
        return cls(Path(directory or default_cache_dir()) / "requests.sqlite")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        blob = orjson.dumps(value)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, blob)
            )

    def __contains__(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
