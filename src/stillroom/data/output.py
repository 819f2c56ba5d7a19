"""The output folder and its crash-safe commit protocol.

Layout (the public contract)::

    OUT/data/part-NNNNN.parquet      rows that made it through
    OUT/failed/part-NNNNN.parquet    rows whose requests failed after retries (error, stage, attempts)
    OUT/dropped/part-NNNNN.parquet   rows a filter removed (drop_reason, stage)
    OUT/README.md, OUT/report.html   written last, only when the run is complete
    OUT/.stillroom/                  run state: config fingerprint, commit log, checkpoints

A commit writes each shard to a temporary name, fsyncs it, renames it into place, and only then
appends one line to ``.stillroom/commits.jsonl`` naming the files and the keys (source rows) they
finish. A shard that no commit line names is debris from a crash and is deleted on the next start;
a torn last line of the log is ignored. So after any crash every row is either committed, in
full, with all its siblings, or not at all, and a rerun processes exactly the keys not yet
committed: each input row is written once.

What else holds, and why:

* **One writer.** A run holds an exclusive lock on ``.stillroom/lock`` (``flock``; the holder's
  pid, host and start time are written in it) from before the folder is prepared until its card
  is written. A second process is refused before it touches anything; a lock left by a process
  that died is released by the kernel and taken over, and the run says so.
* **Commits never overlap.** ``commit`` is serialized by a lock, so two callers (a timed flush and
  the final one) can never pick the same sequence number or shard name.
* **Damage is found, not trusted.** Each commit record names its files with their sizes. On every
  start each committed file is checked (present, the recorded size, a readable Parquet footer);
  a record with a missing or damaged file is undone (its other files removed, its keys redone,
  their answers coming from the request cache) and the run says which file it was. An unreadable
  line of the commit log is skipped the same way. A folder counts as complete only when its
  completion record exists and every committed file is present at its recorded size.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from stillroom.data.commit_log import (
    KINDS,
    RunState,
    committed_counts,
    files_of,
    fingerprint_digest,
    latest_sizes,
    same_run,
    seal_holds,
    sealed,
    stored_fingerprint,
)
from stillroom.data.row_files import (
    append_line,
    fsync_write,
    read_rows_file,
    write_rows_atomically,
    write_table_atomically,
)
from stillroom.data.rows import Row
from stillroom.data.writer_lock import describe_holder, lock_holder
from stillroom.errors import OutputFolderError
from stillroom.secrets import redact_value

if TYPE_CHECKING:
    import pyarrow as pa


log = logging.getLogger(__name__)

# pyarrow is imported when the first shard is written (on a worker thread, while requests are in
# flight), not with this module: every run starts ~0.1 s sooner, and `--help` does not pay for it.

STATE_DIR = ".stillroom"


class OutputFolder:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.state_dir = self.root / STATE_DIR
        self.commit_log = self.state_dir / "commits.jsonl"
        self.sessions_log = self.state_dir / "sessions.jsonl"
        self.run_file = self.state_dir / "run.json"
        self.complete_file = self.state_dir / "complete.json"
        self.lock_file = self.state_dir / "lock"
        self._lock_fd: int | None = None
        # Commits come from worker threads (asyncio.to_thread); one at a time, always.
        self._commit_lock = threading.Lock()

    # -- the writer's lock -------------------------------------------------------------------

    def acquire(self) -> str | None:
        """Become the only writer of this folder; a note when a dead writer's lock was taken over.

        Raises OutputFolderError when another process holds the folder, or it cannot be made.
        """
        if self._lock_fd is not None:
            return None
        if self.root.exists() and not self.root.is_dir():
            raise OutputFolderError(f"{self.root} exists and is not a folder")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputFolderError(
                f"cannot write the output folder {self.root}: {error.strerror or error}; choose "
                "a folder you can write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = lock_holder(fd)
            os.close(fd)
            raise OutputFolderError(
                f"{self.root} is being written by another stillroom process ({holder}); wait "
                "for it to finish (or stop it), then run again"
            ) from None
        previous = lock_holder(fd, describe=False)
        note = None
        if previous:
            note = (
                f"took over the lock of {self.root} left by {describe_holder(previous)}, which is no "
                "longer running"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.time()}), 0)
        os.fsync(fd)
        self._lock_fd = fd
        return note

    def __del__(self) -> None:
        # A folder object dropped while it holds the lock (a library caller that never released
        # it) gives the lock back; at interpreter exit the kernel does it anyway.
        with contextlib.suppress(Exception):
            self.release()

    def writer(self) -> str | None:
        """Who is writing this folder now, from the lock file's record: a live process on this
        host, or None. Read only: probing the lock itself (even a shared lock, for an instant)
        could make a run starting at that moment believe the folder taken."""
        if self._lock_fd is not None:
            return None
        try:
            holder = orjson.loads(self.lock_file.read_bytes() or b"null")
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
            return None
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass
        return describe_holder(holder)

    def release(self) -> None:
        """Stop being the writer (the lock file is emptied: no stale holder is reported)."""
        if self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- opening ---------------------------------------------------------------------------

    def prepare(self, fingerprint: dict[str, Any], *, overwrite: bool = False) -> RunState:
        """Make the folder ready for this run; return what earlier sessions already committed.

        Takes the writer's lock first (see :meth:`acquire`); the caller releases it when the run
        is over.
        """
        takeover = self.acquire()
        try:
            state = self._prepare(fingerprint, overwrite)
        except OSError as error:
            raise OutputFolderError(
                f"cannot write the output folder {self.root}: {error.strerror or error}"
                f"{f' ({error.filename})' if error.filename else ''}"
            ) from None
        if takeover:
            state.notes.insert(0, takeover)
        return state

    def _prepare(self, fingerprint: dict[str, Any], overwrite: bool) -> RunState:
        if overwrite:
            self.clear()
        previous = self._read_run_file()
        if previous is not None:
            if not same_run(previous, fingerprint):
                then, now = (previous.get("fingerprint") or {}).get("version"), fingerprint.get("version")
                if then != now:  # an older stillroom's keys mean other rows: no resume
                    raise OutputFolderError(
                        f"{self.root} was written by another stillroom version (run format {then}, "
                        f"now {now}); pass --overwrite to start it again (answers come from the cache)")
                raise OutputFolderError(
                    f"{self.root} holds the output of a different run (its pipeline, input or "
                    "seed differ); choose another folder or pass --overwrite to replace it"
                )
        elif any(
            (self.root / kind).exists() and any((self.root / kind).iterdir()) for kind in KINDS
        ):
            raise OutputFolderError(
                f"{self.root} already holds data that stillroom did not write; choose another "
                "folder or pass --overwrite"
            )
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if previous is None:
            fsync_write(self.run_file, orjson.dumps({"fingerprint": stored_fingerprint(fingerprint),
                                                      "digest": fingerprint_digest(fingerprint)}))
        records, notes = self._repair_commits()
        records, undone = self._check_committed(records)
        notes += undone
        notes += self._remove_debris(records)
        # The card, report and completion marker describe a finished run; this one is not (yet).
        for stale in (self.complete_file, self.root / "README.md", self.root / "report.html"):
            stale.unlink(missing_ok=True)
        state = self._state_of(records)
        state.notes.extend(notes)
        return state

    def refuse_as_input(self, path: Path | None) -> None:
        """Raise OutputFolderError when ``path`` (a run's input) lies in what this folder's run
        writes or clears: reading it while writing it, or clearing it with --overwrite, would
        lose the input itself."""
        if path is None:
            return
        source = path.resolve()
        if source.is_dir() and (source == self.root.resolve() or source in self.root.resolve().parents):
            raise OutputFolderError(
                f"the output folder {self.root} lies inside the input folder {path}: the run's "
                "own files would become part of its input; choose an output folder outside it"
            )
        for part in [*(self.root / kind for kind in KINDS), self.state_dir]:
            if source == part.resolve() or part.resolve() in source.parents:
                raise OutputFolderError(
                    f"the input {path} lies in the output folder's {part.name}/, which this run "
                    f"writes (and --overwrite clears); copy it elsewhere or choose another "
                    f"output folder than {self.root}"
                )

    def holds_run(self, fingerprint: dict[str, Any]) -> bool:
        """Whether this folder was made by the run with ``fingerprint`` (pipeline, input, seed)."""
        try:
            previous = self._read_run_file()
        except OutputFolderError:
            return False
        return previous is not None and same_run(previous, fingerprint)

    def _read_run_file(self) -> dict[str, Any] | None:
        if not self.run_file.exists():
            return None
        try:
            previous = orjson.loads(self.run_file.read_bytes())
        except orjson.JSONDecodeError:
            previous = None
        if not isinstance(previous, dict) or "fingerprint" not in previous:
            raise OutputFolderError(
                f"{self.run_file} is damaged (not the run record stillroom writes), so the run in "
                f"{self.root} cannot be resumed safely; pass --overwrite to start it again "
                "(answers already received come from the request cache) or choose another folder"
            )
        return previous

    def clear(self) -> None:
        """Remove what stillroom wrote here (never anything else in the folder). The writer's
        lock file stays: it is what keeps a second process out meanwhile.

        What says "finished" goes first: a kill halfway through must leave a folder that looks
        unfinished (and is resumed or cleared again), never a card or completion record over
        data that is gone."""
        for marker in (self.complete_file, self.root / "README.md", self.root / "report.html"):
            marker.unlink(missing_ok=True)
        self.commit_log.unlink(missing_ok=True)
        for kind in KINDS:
            shutil.rmtree(self.root / kind, ignore_errors=True)
        if self.state_dir.is_dir():
            for path in self.state_dir.iterdir():
                if path.name == self.lock_file.name:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def read_commits(self) -> list[dict[str, Any]]:
        """The committed records. A line that does not parse (or whose checksum does not match)
        is not a commit: a torn last line (a crash mid-append) or damage anywhere."""
        return self._parse_commits()[0]

    def _repair_commits(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The committed records and what was wrong with the log; the lines that are not
        commits are cut out of it (only the run that owns the folder does this), so their
        shards, which no record names any more, are removed as debris and their keys redone."""
        records, notes, cleaned, raw = self._parse_commits()
        if cleaned != raw:
            fsync_write(self.commit_log, cleaned)
        return records, notes

    def _parse_commits(self) -> tuple[list[dict[str, Any]], list[str], bytes, bytes]:
        """(records, notes on damaged lines, the log holding only the records, the log)."""
        notes: list[str] = []
        if not self.commit_log.exists():
            return [], notes, b"", b""
        records = []
        raw = self.commit_log.read_bytes()
        lines = raw.split(b"\n")
        kept_lines: list[bytes] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
                    raise ValueError("not a commit record")
                if not seal_holds(record):
                    raise ValueError("its checksum does not match: the line was changed")
            except (orjson.JSONDecodeError, ValueError):
                last = all(not rest.strip() for rest in lines[number:])
                if not last:
                    notes.append(
                        f"{self.commit_log} line {number} is damaged: the rows it committed are "
                        "done again (their answers come from the request cache)"
                    )
                continue
            records.append(record)
            kept_lines.append(line)
        return records, notes, b"".join(line + b"\n" for line in kept_lines), raw

    def _check_committed(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        """Undo the records whose files are missing or damaged (see the module docstring)."""
        notes: list[str] = []
        owners: dict[str, int] = {}
        bad: dict[int, str] = {}  # record index -> why
        sizes = latest_sizes(records)
        for index, record in enumerate(records):
            segment = record.get("segment", 0)
            for key in record.get("keys", [])[:1]:
                if segment > 0 and not str(key).startswith(f"{segment}:"):
                    raise OutputFolderError(
                        f"{self.commit_log} was written by an earlier stillroom whose keys for "
                        "rows after an all-rows stage could repeat rows on resume; rerun with "
                        "--overwrite (answers already received come from the request cache)"
                    )
            for relative in files_of(record):
                if relative in owners:
                    why = f"{relative} is named by two commits"
                    bad[index] = why
                    bad.setdefault(owners[relative], why)
                owners[relative] = index
                if index not in bad:
                    problem = self._damage(relative, sizes.get(relative))
                    if problem:
                        bad[index] = f"{relative} {problem}"
        # Rows after an all-rows stage come from its checkpoint: a damaged checkpoint takes every
        # later segment with it, and so does a checkpoint whose record is gone (a damaged line).
        checkpointed = {r.get("segment", 0) for r in records if r.get("checkpoint")}
        orphans = [r.get("segment", 0) for r in records
                   if r.get("segment", 0) > 0 and r.get("segment", 0) - 1 not in checkpointed]
        redo_from = min(
            [records[i].get("segment", 0) for i in bad if records[i].get("checkpoint")] + orphans,
            default=None,
        )
        if not bad and redo_from is None:
            return records, notes
        kept: list[dict[str, Any]] = []
        for index, record in enumerate(records):
            segment = record.get("segment", 0)
            if index in bad or (redo_from is not None and segment >= redo_from):
                why = bad.get(index, f"it follows the damaged or missing checkpoint before "
                                     f"segment {redo_from}")
                rows = sum(record.get("rows", {}).values())
                notes.append(
                    f"commit {record['seq']} undone ({rows} rows): {why}; its rows are done again "
                    "(their answers come from the request cache)"
                )
                for relative in files_of(record):
                    (self.root / relative).unlink(missing_ok=True)
            else:
                kept.append(record)
        fsync_write(self.commit_log, b"".join(orjson.dumps(r) + b"\n" for r in kept))  # sealed
        return kept, notes

    def _damage(self, relative: str, size: int | None) -> str | None:
        """What is wrong with the committed file ``relative``, or None when it looks whole."""
        import pyarrow.parquet as pq

        path = self.root / relative
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return "is missing"
        if size is not None and actual != size:
            return f"has {actual} bytes, {size} were committed"
        if path.name.endswith(".jsonl.zst"):
            return None  # its sealed size is the check; reading it is (see read_checkpoint)
        try:
            pq.read_metadata(path)
        except Exception:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            return "is not readable Parquet"
        return None

    def committed_files_intact(self, records: list[dict[str, Any]] | None = None) -> bool:
        """Every file a commit names is present at its committed size (no Parquet is read)."""
        records = self.read_commits() if records is None else records
        sizes = latest_sizes(records)
        for record in records:
            for relative in files_of(record):
                path = self.root / relative
                if not path.exists():
                    return False
                if relative in sizes and path.stat().st_size != sizes[relative]:
                    return False
        return True

    @staticmethod
    def _state_of(records: list[dict[str, Any]]) -> RunState:
        state = RunState()
        for record in records:
            segment = record.get("segment", 0)
            state.done(segment).update(record.get("keys", []))
            if record.get("checkpoint"):
                state.checkpoints[segment] = record["checkpoint"]
            state.next_seq = max(state.next_seq, record["seq"] + 1)
        return state

    def _remove_debris(self, records: list[dict[str, Any]]) -> list[str]:
        """Delete shards no commit names (files a crash left between writing and committing)
        and temporary files; say what was removed."""
        committed: set[str] = set()
        for record in records:
            committed.update(files_of(record))
        removed: list[str] = []
        for folder in [self.root / kind for kind in KINDS] + [self.state_dir]:
            for path in folder.iterdir():
                relative = path.relative_to(self.root).as_posix()
                uncommitted = path.suffix in (".parquet", ".zst") and relative not in committed
                if path.name.endswith(".tmp") or uncommitted:
                    path.unlink()
                    removed.append(relative)
        for name in ("README.md.tmp", "report.html.tmp"):  # a card staged but never published
            if (self.root / name).exists():
                (self.root / name).unlink()
                removed.append(name)
        if not removed:
            return []
        shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        return [f"removed {len(removed)} file(s) an interrupted session left uncommitted ({shown}); "
                "their rows, if any, are done again"]

    def damage(self) -> list[str]:
        """What is wrong with the committed files, read only (for ``inspect``): one line each."""
        records = self.read_commits()
        sizes = latest_sizes(records)
        problems = []
        for record in records:
            for relative in files_of(record):
                problem = self._damage(relative, sizes.get(relative))
                if problem:
                    problems.append(f"{self.root / relative} {problem}")
        return problems

    # -- writing ---------------------------------------------------------------------------

    def commit(
        self,
        state: RunState,
        rows: dict[str, list[Row]],
        keys: Iterable[str],
        *,
        segment: int,
        stats: dict[str, Any] | None = None,
        checkpoint: list[Row] | None = None,
    ) -> None:
        """Durably write ``rows`` (by kind) and mark ``keys`` of ``segment`` as done.

        One commit at a time: the sequence number names the shards, so two commits running
        together would write the same files.
        """
        with self._commit_lock:
            try:
                self._commit(state, rows, keys, segment=segment, stats=stats,
                             checkpoint=checkpoint)
            except OSError as error:  # a full disk, a folder removed under us
                raise OutputFolderError(
                    f"cannot write the output folder {self.root}: {error.strerror or error}; "
                    "rows finished before this are committed: fix the cause and run the same "
                    "command again to resume"
                ) from None

    def _commit(
        self,
        state: RunState,
        rows: dict[str, list[Row]],
        keys: Iterable[str],
        *,
        segment: int,
        stats: dict[str, Any] | None,
        checkpoint: list[Row] | None,
    ) -> None:
        from stillroom.data.tables import rows_to_table

        seq = state.next_seq
        files: dict[str, str] = {}
        sizes: dict[str, int] = {}
        for kind, kind_rows in rows.items():
            if not kind_rows:
                continue
            relative = f"{kind}/part-{seq:05d}.parquet"
            sizes[relative] = write_table_atomically(rows_to_table(kind_rows), self.root / relative)
            files[kind] = relative
        record: dict[str, Any] = {
            "seq": seq,
            "segment": segment,
            "time": time.time(),
            "files": files,
            "rows": {kind: len(kind_rows) for kind, kind_rows in rows.items() if kind_rows},
            "keys": list(keys),
        }
        if checkpoint is not None:
            relative = f"{STATE_DIR}/checkpoint-{segment}.jsonl.zst"
            sizes[relative] = write_rows_atomically(checkpoint, self.root / relative)
            record["checkpoint"] = relative
        record["sizes"] = sizes
        if stats:
            record["stats"] = stats
        append_line(self.commit_log, sealed(record))
        if checkpoint is not None:
            state.checkpoints[segment] = record["checkpoint"]
        state.next_seq = seq + 1
        state.done(segment).update(record["keys"])

    def read_checkpoint(self, relative: str) -> list[Row]:
        """The rows an all-rows stage produced, exactly as they were (see write_rows_atomically);
        a Parquet checkpoint of an older stillroom still reads."""
        try:
            if relative.endswith(".parquet"):
                import pyarrow.parquet as pq

                return pq.read_table(self.root / relative).to_pylist()
            return read_rows_file(self.root / relative)
        except (OSError, ValueError) as error:  # same size, damaged content
            raise OutputFolderError(
                f"the checkpoint {self.root / relative} is damaged ({error}); run again with "
                "--overwrite (answers already received come from the request cache)"
            ) from None

    # -- sessions and completion -----------------------------------------------------------

    def read_sessions(self) -> list[dict[str, Any]]:
        from stillroom.data.sessions import read_sessions  # damaged lines: see there

        return read_sessions(self.sessions_log)

    def record_session(self, session: dict[str, Any]) -> None:
        append_line(self.sessions_log, orjson.dumps(redact_value(session), default=str))

    def mark_complete(self, summary: dict[str, Any]) -> None:
        fsync_write(self.complete_file, orjson.dumps(redact_value(summary), default=str))

    def is_complete(self) -> bool:
        """Finished (its completion record and card are there, and the record's counts are the
        commit log's), and nothing committed has gone missing or changed size since."""
        if not (self.complete_file.exists() and (self.root / "README.md").exists()):
            return False
        try:
            record = orjson.loads(self.complete_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return False
        records = self.read_commits()
        counts = record.get("counts") if isinstance(record, dict) else None
        if isinstance(counts, dict) and counts != committed_counts(records):
            return False
        return self.committed_files_intact(records)

    # -- reading back ----------------------------------------------------------------------

    def shard_paths(self, kind: str) -> list[Path]:
        folder = self.root / kind
        return sorted(folder.glob("part-*.parquet")) if folder.exists() else []

    def count(self, kind: str) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(path).metadata.num_rows for path in self.shard_paths(kind))

    def read_column(self, kind: str, column: str) -> list[Any]:
        import pyarrow.parquet as pq

        values: list[Any] = []
        for path in self.shard_paths(kind):
            parquet = pq.ParquetFile(path)
            if column in parquet.schema_arrow.names:
                values.extend(parquet.read(columns=[column]).column(column).to_pylist())
        return values

    def read_columns(self, kind: str, columns: list[str]) -> list[Row]:
        """Every row of ``kind`` with only ``columns`` (null where a shard lacks one)."""
        import pyarrow.parquet as pq

        rows: list[Row] = []
        for path in self.shard_paths(kind):
            parquet = pq.ParquetFile(path)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            table = parquet.read(columns=present)
            for row in table.to_pylist() if present else [{}] * parquet.metadata.num_rows:
                rows.append({column: row.get(column) for column in columns})
        return rows

    def read_rows(self, kind: str, limit: int | None = None) -> list[Row]:
        import pyarrow.parquet as pq

        rows: list[Row] = []
        for path in self.shard_paths(kind):
            rows.extend(pq.read_table(path).to_pylist())
            if limit is not None and len(rows) >= limit:
                return rows[:limit]
        return rows

    def harmonize_shards(self) -> None:
        """Give every shard of a kind one schema, so ``load_dataset("parquet")`` reads them all.

        Shards are written as rows arrive and each infers its own schema (a column that is all
        null in one shard, a metadata field present in another); rewriting the odd ones at the end
        is cheap next to the requests that produced them.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        from stillroom.data.tables import as_json_text, conflicting_fields, rows_to_table, unify

        resized: dict[str, int] = {}
        for kind in KINDS:
            paths = self.shard_paths(kind)
            if len(paths) < 2:
                continue
            schemas = [pq.read_schema(path).remove_metadata() for path in paths]
            # A column whose shards disagree on its type (text in some, a list of messages in
            # others, as when input rows mix `prompt` and `messages`) is stored as JSON text in
            # every shard, the way one shard stores a column that mixes types: no row is lost.
            as_text = conflicting_fields(schemas)
            if as_text:
                log.warning(
                    "%s/: column(s) %s hold different types in different shards; they are "
                    "stored as JSON text", kind, sorted(as_text),
                )
            target = unify([_without(schema, as_text) for schema in schemas])
            for name in as_text:
                target = target.append(pa.field(name, pa.string()))
            for path, schema in zip(paths, schemas, strict=True):
                if schema.equals(target):
                    continue
                rows = pq.read_table(path).to_pylist()
                for row in rows:
                    for name in as_text:
                        row[name] = as_json_text(row.get(name))
                relative = path.relative_to(self.root).as_posix()
                resized[relative] = write_table_atomically(rows_to_table(rows, schema=target), path)
        if resized:
            # The shards' new sizes, so the next start does not take them for damaged ones.
            with self._commit_lock:
                records = self.read_commits()
                seq = max((r["seq"] for r in records), default=-1) + 1
                resize: dict[str, Any] = {"seq": seq, "segment": 0, "time": time.time(), "files": {}, "rows": {},
                          "keys": [], "sizes": resized, "rewrite": True}
                append_line(self.commit_log, sealed(resize))


def _without(schema: pa.Schema, names: set[str]) -> pa.Schema:
    for name in names:
        index = schema.get_field_index(name)
        if index >= 0:
            schema = schema.remove(index)
    return schema
