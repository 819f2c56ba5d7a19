"""Files written whole or not at all: shards and checkpoints renamed into place once synced, and
lines appended in one write. The output folder's commit protocol rests on these."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from stillroom.data.rows import Row

if TYPE_CHECKING:
    import pyarrow as pa


def fsync_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def append_line(path: Path, line: bytes) -> None:
    """Append one line to a log, durably (the commit and session logs)."""
    with open(path, "ab") as handle:
        handle.write(line + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_table_atomically(table: pa.Table, path: Path) -> int:
    """Write ``table`` to ``path`` through a temporary file, durably; returns its size."""
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
        size = os.fstat(handle.fileno()).st_size
    os.replace(tmp, path)
    return size


def write_rows_atomically(rows: list[Row], path: Path) -> int:
    """Rows as zstd-compressed JSON lines, through a temporary file, durably; returns the size.

    For checkpoints: rows must read back exactly as they were given, because the rows after an
    all-rows stage are read back from its checkpoint in every session (the first included), so
    that a resumed run asks the same requests. A Parquet round trip is not exact: it gives every
    row every column (None where it had none, which changes a request) and stores a column whose
    type varies as JSON text. Values JSON cannot hold (bytes, dates) are stored as their text.
    """
    import pyarrow as pa

    tmp = path.with_name(path.name + ".tmp")
    with pa.CompressedOutputStream(str(tmp), "zstd") as stream:
        for row in rows:
            stream.write(row_line(row) + b"\n")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
        size = os.fstat(handle.fileno()).st_size
    os.replace(tmp, path)
    return size


def row_line(row: Row) -> bytes:
    return orjson.dumps(row, default=str, option=orjson.OPT_SERIALIZE_NUMPY)


def as_checkpointed(rows: list[Row]) -> list[Row]:
    """``rows`` as :func:`read_rows_file` gives them back after :func:`write_rows_atomically`."""
    return [orjson.loads(row_line(row)) for row in rows]


def read_rows_file(path: Path) -> list[Row]:
    """The rows of a file written by :func:`write_rows_atomically`."""
    import pyarrow as pa

    with pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") as stream:
        data = stream.read()
    return [orjson.loads(line) for line in data.split(b"\n") if line]
