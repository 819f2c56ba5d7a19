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
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from stillroom.errors import OutputFolderError

if TYPE_CHECKING:
    import pyarrow as pa

Row = dict[str, Any]

log = logging.getLogger(__name__)

# pyarrow is imported when the first shard is written (on a worker thread, while requests are in
# flight), not with this module: every run starts ~0.1 s sooner, and `--help` does not pay for it.

KINDS = ("data", "failed", "dropped")
STATE_DIR = ".stillroom"


def _fsync_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_table_atomically(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class RunState:
    """What earlier sessions of this run committed."""

    done_keys: dict[int, set[str]] = field(default_factory=dict)  # segment -> keys
    checkpoints: dict[int, str] = field(default_factory=dict)  # segment -> checkpoint file
    next_seq: int = 0

    def done(self, segment: int) -> set[str]:
        return self.done_keys.setdefault(segment, set())


class OutputFolder:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.state_dir = self.root / STATE_DIR
        self.commit_log = self.state_dir / "commits.jsonl"
        self.sessions_log = self.state_dir / "sessions.jsonl"
        self.run_file = self.state_dir / "run.json"
        self.complete_file = self.state_dir / "complete.json"

    # -- opening ---------------------------------------------------------------------------

    def prepare(self, fingerprint: dict[str, Any], *, overwrite: bool = False) -> RunState:
        """Make the folder ready for this run; return what earlier sessions already committed."""
        if overwrite:
            self.clear()
        if self.root.exists() and not self.root.is_dir():
            raise OutputFolderError(f"{self.root} exists and is not a folder")
        if self.run_file.exists():
            previous = orjson.loads(self.run_file.read_bytes())
            if previous.get("fingerprint") != fingerprint:
                raise OutputFolderError(
                    f"{self.root} holds the output of a different run (its pipeline, input or "
                    "seed differ); choose another folder or pass --overwrite to replace it"
                )
        elif self.root.exists() and any(
            (self.root / kind).exists() and any((self.root / kind).iterdir()) for kind in KINDS
        ):
            raise OutputFolderError(
                f"{self.root} already holds data that stillroom did not write; choose another "
                "folder or pass --overwrite"
            )
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.run_file.exists():
            _fsync_write(self.run_file, orjson.dumps({"fingerprint": fingerprint}))
        records = self.read_commits(repair=True)
        self._remove_debris(records)
        # The card, report and completion marker describe a finished run; this one is not (yet).
        for stale in (self.complete_file, self.root / "README.md", self.root / "report.html"):
            stale.unlink(missing_ok=True)
        return self._state_of(records)

    def clear(self) -> None:
        """Remove what stillroom wrote here (never anything else in the folder)."""
        for kind in KINDS:
            shutil.rmtree(self.root / kind, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        for name in ("README.md", "report.html"):
            (self.root / name).unlink(missing_ok=True)

    def read_commits(self, *, repair: bool = False) -> list[dict[str, Any]]:
        """The committed records. A torn last line (a crash mid-append) is not a commit; with
        ``repair`` (only the run that owns the folder does this) it is cut off the log."""
        if not self.commit_log.exists():
            return []
        records = []
        raw = self.commit_log.read_bytes()
        valid_length = 0
        for line in raw.split(b"\n"):
            if not line:
                continue
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                break  # a torn write from a crash: everything after it is not committed
            valid_length += len(line) + 1
        if repair and valid_length != len(raw):
            with open(self.commit_log, "r+b") as handle:
                handle.truncate(min(valid_length, len(raw)))
                if valid_length > len(raw):  # a whole record that lost only its newline
                    handle.seek(0, os.SEEK_END)
                    handle.write(b"\n")
        return records

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

    def _remove_debris(self, records: list[dict[str, Any]]) -> None:
        """Delete shards no commit names: files a crash left between writing and committing."""
        committed: set[str] = set()
        for record in records:
            committed.update(record.get("files", {}).values())
            if record.get("checkpoint"):
                committed.add(record["checkpoint"])
        for folder in [self.root / kind for kind in KINDS] + [self.state_dir]:
            for path in folder.iterdir():
                relative = path.relative_to(self.root).as_posix()
                if path.name.endswith(".tmp") or path.suffix == ".parquet" and relative not in committed:
                    path.unlink()

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
        """Durably write ``rows`` (by kind) and mark ``keys`` of ``segment`` as done."""
        from stillroom.data.tables import rows_to_table

        seq = state.next_seq
        files: dict[str, str] = {}
        for kind, kind_rows in rows.items():
            if not kind_rows:
                continue
            relative = f"{kind}/part-{seq:05d}.parquet"
            write_table_atomically(rows_to_table(kind_rows), self.root / relative)
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
            relative = f"{STATE_DIR}/checkpoint-{segment}.parquet"
            write_table_atomically(rows_to_table(checkpoint), self.root / relative)
            record["checkpoint"] = relative
            state.checkpoints[segment] = relative
        if stats:
            record["stats"] = stats
        line = orjson.dumps(record) + b"\n"
        with open(self.commit_log, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        state.next_seq = seq + 1
        state.done(segment).update(record["keys"])

    def read_checkpoint(self, relative: str) -> list[Row]:
        import pyarrow.parquet as pq

        return pq.read_table(self.root / relative).to_pylist()

    # -- sessions and completion -----------------------------------------------------------

    def read_sessions(self) -> list[dict[str, Any]]:
        if not self.sessions_log.exists():
            return []
        out = []
        for line in self.sessions_log.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out

    def record_session(self, session: dict[str, Any]) -> None:
        with open(self.sessions_log, "ab") as handle:
            handle.write(orjson.dumps(session, default=str) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    def mark_complete(self, summary: dict[str, Any]) -> None:
        _fsync_write(self.complete_file, orjson.dumps(summary, default=str))

    def is_complete(self) -> bool:
        return self.complete_file.exists()

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
                write_table_atomically(rows_to_table(rows, schema=target), path)


def _without(schema: pa.Schema, names: set[str]) -> pa.Schema:
    for name in names:
        index = schema.get_field_index(name)
        if index >= 0:
            schema = schema.remove(index)
    return schema
