"""Crash-safe request cache: every response is durable the moment it arrives.

SQLite in WAL mode, written by a dedicated thread as responses arrive (see RequestCache): a
``kill -9`` finds on the next run every response that arrived more than an instant before it, so
a rerun resends nothing already answered. ``synchronous=NORMAL`` survives any process crash (the
OS holds the WAL); only a power cut can lose the last few commits, which would then simply be
asked again. Several processes (Ray workers) may
share one file: WAL lets readers and one writer proceed together, and ``busy_timeout`` queues
writers.

The key is a hash of what was asked (backend, model, messages or prompt, parameters, sample index)
and nothing else: no API key, no URL, and not the code that will parse the answer, so changing a
parser reuses responses already paid for.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from stillroom.errors import CacheError
from stillroom.llm.types import Request

CACHE_ENV_VAR = "STILLROOM_CACHE_DIR"
# Up to this size the whole file is checked when a run opens it (about 0.3 s at the limit).
QUICK_CHECK_BYTES = 256 * 1024 * 1024


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
    """A key -> response store. Safe to use from several threads and processes.

    Writes go through one writer thread: ``put`` hands the response over and returns at once,
    and the writer commits whatever has queued up, one transaction per batch, usually within a
    millisecond of arrival. A commit costs 50-150 us of SQLite work (more when the WAL is
    checkpointed); done on the event loop it delayed every response behind it, and at hundreds
    of responses a second that was the largest share of the client's CPU. SQLite releases the
    GIL while it works, so the writer runs beside the loop. Until written, a response is served
    from memory. ``close`` (and interpreter exit) drains the queue.
    """

    def __init__(self, path: str | os.PathLike[str], *, check: bool = True):
        """``check``: look at the whole file first (see _check_whole); a Ray worker opening the
        file the driver has just checked skips it."""
        self.path = Path(path)
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise CacheError(
                f"the request cache folder {folder} is a file; --cache-dir (or "
                f"${CACHE_ENV_VAR}) must name a folder"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CacheError(
                f"cannot make the request cache folder {folder}: {error.strerror or error}; "
                "choose another with --cache-dir, or run with --no-cache"
            ) from None
        self._lock = threading.Lock()  # guards the reading connection
        try:
            self._db = self._connect()
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
                " WITHOUT ROWID"
            )
            if check:
                self._check_whole()
        except sqlite3.Error as error:
            raise self._damaged(error) from None
        self._pending: dict[str, bytes] = {}
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._closed = False

    def _check_whole(self) -> None:
        """Find a damaged file at the start, not halfway through a run: SQLite's own check of
        every page for a cache of up to QUICK_CHECK_BYTES (a few hundred ms), and for a larger
        one, that the file is as long as its header says (a truncated copy is not)."""
        size = self.path.stat().st_size if self.path.exists() else 0
        wal = self.path.with_name(self.path.name + "-wal")
        if size <= QUICK_CHECK_BYTES:
            verdict = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
            return
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        if pages * page_size > size and not (wal.exists() and wal.stat().st_size > 0):
            raise sqlite3.DatabaseError(
                f"the file has {size} bytes but its header counts {pages * page_size}"
            )

    def _damaged(self, error: BaseException) -> CacheError:
        return CacheError(
            f"the request cache {self.path} is damaged or unreadable ({error}); move it away "
            "(a new cache is then made; answers in the old one would be asked again), point "
            "--cache-dir elsewhere, or run with --no-cache"
        )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    @classmethod
    def in_dir(
        cls, directory: str | os.PathLike[str] | None = None, *, check: bool = True
    ) -> RequestCache:
        return cls(Path(directory or default_cache_dir()) / "requests.sqlite", check=check)

    def get(self, key: str) -> dict[str, Any] | None:
        blob = self._pending.get(key)
        if blob is None:
            try:
                with self._lock:
                    row = self._db.execute(
                        "SELECT value FROM responses WHERE key = ?", (key,)
                    ).fetchone()
            except sqlite3.Error as error:  # damaged since the start: stop the run, say where
                raise self._damaged(error) from None
            if row is None:
                return None
            blob = row[0]
        try:
            return orjson.loads(blob)  # type: ignore[no-any-return]
        except orjson.JSONDecodeError:
            return None  # a damaged entry is not an answer: the request is sent again

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self._writer_error is not None:
            raise CacheError(
                f"the request cache {self.path} cannot be written ({self._writer_error}); "
                "answers received since are lost to later runs. Free disk space or choose "
                "another --cache-dir, then rerun to resume"
            )
        if self._closed:
            raise RuntimeError("the request cache is closed")
        blob = orjson.dumps(value)
        self._pending[key] = blob
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="stillroom-cache", daemon=True)
            self._writer.start()
            atexit.register(self.close)
        self._queue.put((key, blob))

    def _write_loop(self) -> None:
        db = self._connect()
        try:
            while True:
                item = self._queue.get()
                batch = [item]
                while True:  # take everything that queued up meanwhile: one commit for all
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [entry for entry in batch if entry is not None]
                if rows:
                    with db:
                        db.execute("BEGIN")
                        db.executemany(
                            "INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", rows
                        )
                    for key, blob in rows:
                        if self._pending.get(key) is blob:
                            del self._pending[key]
                if len(rows) < len(batch):
                    return  # close() asked us to stop, after writing what came before
        except BaseException as error:  # noqa: BLE001 - surfaced by the next put
            self._writer_error = error
        finally:
            db.close()

    def flush(self) -> None:
        """Wait until every response handed to ``put`` is written."""
        if self._writer is None:
            return
        self._queue.put(None)
        self._writer.join()
        self._writer = None
        if self._writer_error is not None:
            raise CacheError(f"the request cache {self.path} could not be written: "
                             f"{self._writer_error}")

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        self.flush()
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            with self._lock:
                self._db.close()
