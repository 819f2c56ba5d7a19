"""A pipeline's input: a file, a folder or rows in memory, checked in full before any request.

The check pass reads every row once: it finds a malformed line, a missing column or a column whose
type changes from row to row, and names the file and line, before a single request is paid for. It
also counts the rows (for progress) and fingerprints the input (so a rerun into the same output
folder resumes only when the input is the same).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.data.rows import Row
from stillroom.errors import ConfigError, InputError
from stillroom.pipeline.mixing import MixSource, check_sources, mix_rows


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


class InputSource:
    def __init__(
        self,
        spec: str | os.PathLike[str] | InputConfig | list[Row] | None,
        base_dir: Path,
        limit: int | None = None,
        seed: int = 0,
    ):
        self.rows_in_memory: list[Row] | None = None
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
        if isinstance(spec, list):
            self.rows_in_memory = spec
            self.description = description or f"{len(spec)} rows given in Python"
        elif spec is not None:
            self.path = resolve_input_path(spec, base_dir)
            self.description = str(self.path)
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
            source = ((f"row {index}", row) for index, row in enumerate(self.rows_in_memory))
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
                raise InputError(f"a row must be a mapping, got {type(row).__name__}", path=where)
            metadata = row.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):
                # Stages add their lineage to it: as text or a list it would fail every row
                # after its requests were paid for.
                raise InputError(
                    f"column 'metadata' holds {_kind(metadata)}; stillroom keeps lineage in it, so "
                    "it must be an object (or absent): rename the column",
                    path=where,
                )
            for column, value in row.items():
                kind = _kind(value)
                if kind is None:
                    continue
                seen = kinds.get(column)
                if seen is None:
                    kinds[column] = (kind, where)
                elif seen[0] != kind:
                    raise InputError(
                        f"column {column!r} holds {kind} here but {seen[0]} at {seen[1]}; "
                        "a column must have one type",
                        path=where,
                    )
            if check_row is not None:
                problem = check_row(row)
                if problem:
                    raise InputError(problem, path=where)
            count += 1
        if count == 0:
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
            self.digest = hashlib.sha256(
                orjson.dumps(self.rows_in_memory or [], option=orjson.OPT_SORT_KEYS, default=str)
            ).hexdigest()
        return count

    def _no_rows(self) -> str:
        if self.path is not None:
            return ("no rows: the file is empty (or holds only blank lines, or a header and no "
                    "rows); there is nothing to do")
        if self.mix is not None:
            return "no rows: the mix's sources hold no rows; there is nothing to do"
        return "no rows: the input holds no rows; there is nothing to do"

    def identity(self) -> dict[str, Any]:
        return {"digest": self.digest, "limit": self.limit}
