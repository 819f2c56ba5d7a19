"""A pipeline's input: a file, a folder or rows in memory, checked in full before any request.

Rows in memory are a list of dicts or a ``datasets.Dataset`` (see :func:`rows_in_memory`). They
are read where they are, not copied to a file first: the run fingerprints them by content (the
same rows give the same digest whether a list or a Dataset holds them; see :func:`_rows_digest`),
the Ray executor reads every input on the driver and ships the
rows to its workers, and each row is handed to the stages as a copy, so a stage that changes its
row in place cannot change the caller's list (and with it the digest a resume compares).

The check pass reads every row once: it finds a malformed line, a missing column or a column whose
type changes from row to row, and names the file and line, before a single request is paid for. It
also counts the rows (for progress) and fingerprints the input (so a rerun into the same output
folder resumes only when the input is the same).
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import math
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.data.rows import Row
from stillroom.errors import ConfigError, InputError
from stillroom.pipeline.mixing import MixSource, check_sources, mix_rows

if TYPE_CHECKING:
    import datasets


class InputConfig(BaseModel):
    """``{path: FILE, limit: N}``; ``{rows: N}``: N empty rows (``id`` only), for methods that
    generate from nothing, such as Magpie; or ``{mix: [sources], size: N}``: real and synthetic
    sources mixed with target shares (see :mod:`stillroom.pipeline.mixing`)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    rows: int | None = Field(default=None, ge=1, description="N rows holding only an `id`.")
    mix: list[MixSource] | None = Field(
        default=None, min_length=1, description="Sources to mix: {path, kind, share}."
    )
    size: int | None = Field(default=None, ge=1, description="With `mix`: at most N rows.")
    allow_synthetic_only: bool = Field(
        default=False, description="With `mix`: allow a mix with no real source."
    )
    limit: int | None = Field(default=None, ge=1, description="Read only the first N rows.")

    @model_validator(mode="after")
    def _one_source(self) -> InputConfig:
        given = [name for name in ("path", "rows", "mix") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `path` (a file), `rows` (a count) or `mix` (sources)"
            )
        if self.mix is None and (self.size is not None or self.allow_synthetic_only):
            raise ValueError("`size` and `allow_synthetic_only` go with `mix`")
        if self.mix is not None:
            problem = check_sources(self.mix, self.allow_synthetic_only)
            if problem:
                raise ValueError(problem)
        return self


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _input_files(path: Path) -> list[Path]:
    """The files a run reads of ``path``: the file; a Parquet folder's own ``*.parquet`` (not
    what lies below it, such as an output folder made inside it); every file of a ``datasets``
    folder."""
    if not path.is_dir():
        return [path]
    from stillroom.data.readers import detect_format

    if detect_format(path) == "parquet":
        return sorted(path.glob("*.parquet"))
    return sorted(p for p in path.rglob("*") if p.is_file())


def _signature(path: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of each input file: what tells that it changed."""
    out = []
    for file in _input_files(path):
        stat = file.stat()
        out.append((str(file), stat.st_size, stat.st_mtime_ns))
    return out


def _digest_path(path: Path) -> str:
    digest = hashlib.sha256()
    files = _input_files(path)
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023
                digest.update(block)
    return digest.hexdigest()


# What ``Pipeline(input=...)`` takes: a file or folder, an InputConfig, or rows in memory.
InputSpec: TypeAlias = "str | os.PathLike[str] | InputConfig | list[Row] | datasets.Dataset | None"


class RowError(InputError, ConfigError):
    """A bad row of rows given in Python, named by its index: both a bad input (InputError, as a
    bad line of a file is) and a bad argument (ConfigError, ``input``), so either is caught."""

    def __init__(self, message: str, *, where: str | None = None):
        ConfigError.__init__(self, f"{where}: {message}" if where else message, key="input")
        self.reason = message


def rows_in_memory(spec: Any) -> Any:
    """``spec`` as rows a run can read, when it is rows in memory: a list of rows as it is, a
    ``datasets.Dataset`` as plain Python rows (its format reset: a Dataset formatted for torch or
    numpy would yield tensors); None for anything else (a path, an InputConfig). A
    ``DatasetDict``, an ``IterableDataset`` or one row on its own is a ConfigError that says what
    to pass instead."""
    module = type(spec).__module__ or ""
    if not module.startswith("datasets"):  # do not import datasets (a second) for a path
        if isinstance(spec, list):
            return spec
        if isinstance(spec, tuple):
            return list(spec)
        if isinstance(spec, dict):
            raise ConfigError("got one row (a dict); give a list of rows, a file or a Dataset",
                              key="input")
        return None
    import datasets

    if isinstance(spec, datasets.Dataset):
        return spec.with_format(None)
    if isinstance(spec, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ConfigError(
            f"got a DatasetDict with splits {sorted(spec)}; give one split, e.g. "
            f"input=dataset[{sorted(spec)[0]!r}]",
            key="input",
        )
    if isinstance(spec, datasets.IterableDataset):
        raise ConfigError(
            "an IterableDataset (streaming) cannot be fingerprinted before the run, which a "
            "resume needs; load it without streaming=True, or write it to a file first",
            key="input",
        )
    return None


def not_an_input(spec: Any) -> ConfigError:
    """The error for an ``input`` of a kind no run reads (a number, a generator, ...)."""
    return ConfigError(
        "input must be a file or folder, a list of rows (dicts), a datasets.Dataset or an "
        f"InputConfig; got {type(spec).__name__}",
        key="input",
    )


def _each_row(rows: Any) -> Iterator[Any]:
    """The rows of a list, or of a Dataset read a batch at a time: Dataset's own iteration
    formats one row per call, several times slower than cutting a batch's columns into rows
    (measured: 5.3 s against 0.9 s for 100,000 rows). ``iter`` follows the Dataset's indices,
    so a shuffled or selected Dataset keeps its order."""
    if isinstance(rows, list) or not rows.column_names:
        yield from rows
        return
    for batch in rows.iter(batch_size=1000):
        columns = list(batch)
        for values in zip(*batch.values(), strict=True):
            yield dict(zip(columns, values, strict=True))


class _NotJsonLike(Exception):
    """A value of a row that :func:`_plain` cannot encode exactly; ``where`` is its column."""

    def __init__(self, what: str, where: str, hint: str = ""):
        super().__init__(what)
        self.what = what
        self.where = where
        self.hint = hint


def _plain(value: Any, where: str) -> Any:
    """``value`` as the run reads it: JSON-like values as they are; a numpy array or scalar as
    its exact Python value (``tolist``/``item``), a tuple as a list, a set as a list sorted by
    encoding, a bytearray as bytes. Anything else raises _NotJsonLike: the digest used to encode
    it with ``str()``, which is not stable across processes (a set's order follows
    PYTHONHASHSEED, an object's repr holds its address) and not exact (numpy elides the middle
    of a big array), so a resume was refused for the same rows or accepted for other rows. What
    this returns is also what the stages get and what is written to Parquet, so the digest and
    the data agree (a set used to be written in its process's order)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                # Checkpoints, the request cache and Parquet all need text keys.
                raise _NotJsonLike(f"a dict key of type {type(key).__name__} ({key!r})", where,
                                   "; a dict's keys must be text")
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if kind is list or kind is tuple:
        return [_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    module = kind.__module__
    if module == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            return _plain(value.tolist(), where)  # exact: every element, nested for n-d
        if isinstance(value, np.generic):
            return _plain(value.item(), where)
    if isinstance(value, (set, frozenset)):
        items = [_plain(item, f"{where}{{}}") for item in value]
        return sorted(items, key=_encode)
    if isinstance(value, (bool, int, float, str)):  # subclasses: IntEnum, StrEnum, ...
        return value
    if isinstance(value, (bytes, datetime.datetime, datetime.date, datetime.time, decimal.Decimal,
                          uuid.UUID)):
        return value  # exact, and the same in every process; Parquet stores them natively
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (dict, list)):  # subclasses (OrderedDict, defaultdict, ...)
        return _plain(dict(value) if isinstance(value, dict) else list(value), where)
    raise _NotJsonLike(kind.__name__, where)


def _default(value: Any) -> Any:
    """orjson's ``default`` for what :func:`_plain` keeps that JSON has no type for."""
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    raise TypeError(type(value).__name__)  # _plain let nothing else through


def _encode(value: Any) -> bytes:
    encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=_default)
    if b"null" in encoded and _has_nonfinite(value):
        # orjson writes NaN and infinities as null, which made NaN and None one digest.
        encoded = orjson.dumps(_mark_nonfinite(value), option=orjson.OPT_SORT_KEYS,
                               default=_default)
    return encoded


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nonfinite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_nonfinite(item) for item in value)
    return False


def _mark_nonfinite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, dict):
        return {key: _mark_nonfinite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mark_nonfinite(item) for item in value]
    return value


def _plain_row(row: Any, index: int) -> Any:
    """Row ``index`` of rows in memory as the run reads it (see :func:`_plain`): a new dict, so
    a stage that changes its row in place cannot change the caller's (see the module
    docstring); a RowError naming the row and the value's type when it is not JSON-like."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be a mapping, got {type(row).__name__}", where=f"row {index}")
    try:
        return _plain(row, "")
    except _NotJsonLike as error:
        column = error.where.lstrip(".")
        at = f" (at {column!r})" if column else ""
        raise RowError(
            f"rows given in memory must hold JSON-like values (text, numbers, booleans, None, "
            f"lists, dicts with text keys; numpy arrays, sets, bytes, dates and Decimals are "
            f"encoded exactly); got {error.what} in row {index}{at}{error.hint}"
        ) from None


def _strict(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def _encode_row(row: Any, index: int) -> bytes:
    """``_encode(_plain_row(row, index))``, about seven times faster for a row of plain JSON:
    orjson encodes such a row as it is (tuples as lists, dates natively, as _plain keeps them),
    and anything it would need ``default`` for takes the exact path."""
    if type(row) is dict:
        try:
            encoded = orjson.dumps(row, option=orjson.OPT_SORT_KEYS
                                   | orjson.OPT_PASSTHROUGH_DATACLASS, default=_strict)
        except orjson.JSONEncodeError:
            pass
        else:
            if b"null" not in encoded or not _has_nonfinite(row):
                return encoded
    return _encode(_plain_row(row, index))


def _rows_digest(rows: Any) -> str:
    """SHA-256 of the rows, as the run reads them (:func:`_plain_row`), as one JSON list (sorted
    keys), computed row by row: a Dataset is never turned into one big list for it, and a list
    of JSON rows gets the digest it always had. A value that is not JSON-like is a RowError, as
    the check pass is before any request.

    The same rows give the same digest whether a list or a Dataset holds them; but a Dataset
    gives every row every column (None where a row of a ragged list had none), so a ragged list
    and ``Dataset.from_list`` of it are different rows, and different runs."""
    digest = hashlib.sha256(b"[")
    for index, row in enumerate(_each_row(rows)):
        if index:
            digest.update(b",")
        digest.update(_encode_row(row, index))
    digest.update(b"]")
    return digest.hexdigest()


class InputSource:
    def __init__(
        self,
        spec: InputSpec,
        base_dir: Path,
        limit: int | None = None,
        seed: int = 0,
    ):
        # A list of rows or a datasets.Dataset: both have len() and yield dicts.
        self.rows_in_memory: Any = None
        self._signature: list[tuple[str, int, int]] | None = None
        self.path: Path | None = None
        self.limit = limit
        self.mix: InputConfig | None = None
        self.mix_report: list[dict[str, Any]] | None = None
        self._mixed: list[tuple[str, Row]] | None = None
        self._base_dir = base_dir
        self._seed = seed
        description = None
        if isinstance(spec, InputConfig) and spec.mix is not None:
            self.limit = limit or spec.limit
            self.mix = spec
            self.description = "a mix of " + ", ".join(
                f"{source.label()} ({source.kind})" for source in spec.mix
            )
            self.count = 0
            self.digest = ""
            return
        if isinstance(spec, InputConfig):
            self.limit = limit or spec.limit
            if spec.rows is not None:
                spec = [{"id": str(index)} for index in range(spec.rows)]
                description = f"{len(spec)} generated rows, `id` only (input: {{rows: N}})"
            else:
                spec = spec.path
        in_memory = rows_in_memory(spec)
        if in_memory is not None:
            self.rows_in_memory = in_memory
            held = "list" if isinstance(in_memory, list) else type(in_memory).__name__
            self.description = description or f"{len(in_memory)} rows given in Python (a {held})"
        elif isinstance(spec, (str, os.PathLike)):
            self.path = resolve_input_path(spec, base_dir)
            self.description = str(self.path)
        elif spec is not None:
            raise not_an_input(spec)
        else:
            # Nothing to read: every stage takes rows, and one that generates from nothing
            # (Magpie, say) takes `input: {rows: N}`, the number of rows to make.
            raise ConfigError(
                "the pipeline has no input: give `input:` a file (or {path: FILE}), "
                "{rows: N} for stages that generate from nothing, or {mix: [...]}",
                key="input",
            )
        self.count = 0
        self.digest = ""

    def _mixed_rows(self) -> list[tuple[str, Row]]:
        if self._mixed is None:
            assert self.mix is not None and self.mix.mix is not None
            self._mixed, self.mix_report = mix_rows(
                self.mix.mix, self._base_dir, self._seed, self.mix.size
            )
        return self._mixed

    def rows(self) -> Iterator[tuple[str, Row]]:
        if self.mix is not None:
            source: Iterator[tuple[str, Row]] = iter(self._mixed_rows())
        elif self.rows_in_memory is not None:
            # Each row as the digest encodes it, and a copy: stages may change their row in place.
            source = ((f"row {index}", _plain_row(row, index))
                      for index, row in enumerate(_each_row(self.rows_in_memory)))
        else:
            assert self.path is not None
            source = iter_rows(self.path)
        # Once checked, only the rows that were checked: rows appended to the file meanwhile
        # were never checked and are not part of this run (see verify_unchanged).
        stop = self.count or self.limit  # count is 0 until checked, and never above limit
        for index, item in enumerate(source):
            if stop is not None and index >= stop:
                return
            yield item

    def verify_unchanged(self) -> None:
        """Raise InputError when the input file changed since it was checked: the rows of this
        run may then mix two versions of it."""
        if self.path is None or self._signature is None:
            return
        try:
            now = _signature(self.path)
        except OSError:
            now = None
        if now != self._signature:
            raise InputError(
                "the input changed while the run read it, so its rows may mix two versions of "
                "the file; rows finished so far are committed. Keep the input unchanged and run "
                "again with --overwrite (answers already received come from the request cache)",
                path=str(self.path),
            )

    def check(self, check_row: Callable[[Row], str | None] | None) -> int:
        """Read every row; raise InputError at the first bad one. Returns the row count."""
        kinds: dict[str, tuple[str, str]] = {}  # column -> (kind, where first seen)
        count = 0
        self.count = 0
        if self.path is not None and self.path.exists():
            try:
                self._signature = _signature(self.path)
            except OSError as error:
                raise InputError(f"cannot read: {error.strerror or error}",
                                 path=str(self.path)) from None
        for where, row in self.rows():
            if not isinstance(row, dict):
                raise self._bad(f"a row must be a mapping, got {type(row).__name__}", where)
            metadata = row.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):
                # Stages add their lineage to it: as text or a list it would fail every row
                # after its requests were paid for.
                raise self._bad(
                    f"column 'metadata' holds {_kind(metadata)}; stillroom keeps lineage in it, so "
                    "it must be an object (or absent): rename the column",
                    where,
                )
            for column, value in row.items():
                kind = _kind(value)
                if kind is None:
                    continue
                seen = kinds.get(column)
                if seen is None:
                    kinds[column] = (kind, where)
                elif seen[0] != kind:
                    raise self._bad(
                        f"column {column!r} holds {kind} here but {seen[0]} at {seen[1]}; "
                        "a column must have one type",
                        where,
                    )
            if check_row is not None:
                problem = check_row(row)
                if problem:
                    raise self._bad(problem, where)
            count += 1
        if count == 0:
            if self.rows_in_memory is not None:
                raise RowError(self._no_rows())
            raise InputError(self._no_rows(), path=str(self.path) if self.path is not None else None)
        self.count = count
        if self.mix is not None:
            # The mixed rows themselves: the sources' contents, the shares and the seed.
            self.digest = hashlib.sha256(
                orjson.dumps([row for _, row in self._mixed_rows()], option=orjson.OPT_SORT_KEYS,
                             default=str)
            ).hexdigest()
        elif self.path is not None:
            try:
                self.digest = _digest_path(self.path)
            except OSError as error:
                raise InputError(f"cannot read: {error.strerror or error}",
                                 path=str(self.path)) from None
        else:
            self.digest = _rows_digest(self.rows_in_memory)
        return count

    def _bad(self, problem: str, where: str) -> InputError:
        """The error for a bad row: of rows in memory, a RowError naming its index."""
        if self.rows_in_memory is not None:
            return RowError(problem, where=where)
        return InputError(problem, path=where)

    def _no_rows(self) -> str:
        if self.path is not None:
            return ("no rows: the file is empty (or holds only blank lines, or a header and no "
                    "rows); there is nothing to do")
        if self.mix is not None:
            return "no rows: the mix's sources hold no rows; there is nothing to do"
        return "no rows: the input holds no rows; there is nothing to do"

    def identity(self) -> dict[str, Any]:
        return {"digest": self.digest, "limit": self.limit}
