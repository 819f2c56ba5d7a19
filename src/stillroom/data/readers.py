"""Read rows (plain dicts) from JSONL, Parquet, CSV or a Hugging Face ``datasets`` folder.

Every reader yields ``(where, row)`` where ``where`` is "file:line" (JSONL, CSV) or "file:row N"
(Parquet, datasets), so a problem found in any row can be reported at its place. Files are
streamed: nothing here holds a whole dataset in memory.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from stillroom.errors import ConfigError, InputError

Row = dict[str, Any]

BUILTIN_PREFIX = "builtin:"
_BUILTINS = {
    "self_instruct_seed_tasks": "self_instruct_seed_tasks.jsonl",
    "self_instruct_instance_demos": "self_instruct_instance_demos.jsonl",
    "personas": "personas.jsonl",
    "constitution": "constitution.jsonl",
    "preference_principles": "preference_principles.jsonl",
}


def resolve_input_path(path: str | os.PathLike[str], base_dir: Path | None = None) -> Path:
    """A user path, relative to ``base_dir`` (a pipeline file's folder) when not absolute.

    ``builtin:NAME`` names a data file shipped inside the package (e.g. the Self-Instruct seeds).
    """
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        if name not in _BUILTINS:
            known = ", ".join(BUILTIN_PREFIX + key for key in _BUILTINS)
            raise InputError(f"unknown built-in data set {name!r}; known: {known}", path=text)
        return Path(str(resources.files("stillroom.resources").joinpath(_BUILTINS[name])))
    resolved = Path(text).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = base_dir / resolved
    return resolved


def option_file(spec: str, base_dir: Path | None, *, key: str, what: str) -> Path:
    """The file a stage option names (a principles file, a rubric), resolved like ``input:``;
    a ConfigError naming ``key`` when it does not exist."""
    try:
        path = resolve_input_path(spec, base_dir)
    except InputError as error:
        raise ConfigError(error.reason, path=spec, key=key) from None
    if not path.is_file():
        where = "" if path.is_absolute() or spec.startswith(BUILTIN_PREFIX) else (
            f" (a relative path is read from the pipeline file's folder, or the current folder "
            f"for a stage built in Python: {path.resolve()})"
        )
        raise ConfigError(f"no such {what} file{where}", path=str(path), key=key)
    return path


def text_records(
    spec: str, base_dir: Path | None, keys: tuple[str, ...], *, key: str, what: str
) -> tuple[Path, bytes, list[dict[str, str]]]:
    """A stage's file of text records (JSONL, one object a line with exactly ``keys``, each
    non-empty text, ``id`` unique), such as a principles file: its path, bytes (for a version
    hash) and records. The first problem is a ConfigError naming the file, line and ``key``;
    ``what`` names one record in messages ("a principle needs ...")."""
    path = option_file(spec, base_dir, key=key, what="principles")
    data = path.read_bytes()
    records: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue

        def bad(message: str, line: int = number) -> ConfigError:
            return ConfigError(message, path=str(path), line=line, key=key)

        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise bad(f"not valid JSON ({error})") from None
        if not isinstance(item, dict):
            raise bad(f"each line must be a JSON object, got {type(item).__name__}")
        missing = [name for name in keys if name not in item]
        if missing:
            raise bad(f"missing key(s) {missing}; {what} needs {list(keys)}")
        unknown = sorted(set(item) - set(keys))
        if unknown:
            raise bad(f"unknown key(s) {unknown}; {what} has only {list(keys)}")
        for name in keys:
            if not isinstance(item[name], str) or not item[name].strip():
                raise bad(f"`{name}` must be non-empty text")
        if item["id"] in seen:
            raise bad(f"id {item['id']!r} is used twice (first on line {seen[item['id']]})")
        seen[item["id"]] = number
        records.append(item)
    if not records:
        raise ConfigError("the principles file holds no principles", path=str(path), key=key)
    return path, data, records


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return "datasets"
        if (path / "dataset_dict.json").exists():
            return "datasets"
        if any(path.glob("*.parquet")):
            return "parquet"
        raise InputError(
            "a folder must be a Hugging Face `datasets` folder (save_to_disk) or hold .parquet files",
            path=str(path),
        )
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".jsonl", ".ndjson", ".jsonl.gz", ".json")):
        return "jsonl"
    if suffixes.endswith(".parquet"):
        return "parquet"
    if suffixes.endswith((".csv", ".tsv")):
        return "csv"
    raise InputError(
        "unknown input format; use .jsonl, .parquet, .csv or a `datasets` folder", path=str(path)
    )


def iter_rows(path: str | os.PathLike[str]) -> Iterator[tuple[str, Row]]:
    """Yield ``(where, row)`` for every row of the input at ``path``.

    Every problem reading it (a missing, unreadable or damaged file) is an InputError naming
    the file, and the line where there is one.
    """
    source = Path(path)
    try:
        exists = source.exists()
    except OSError as error:  # e.g. a name too long for the file system
        raise InputError(f"cannot read: {_os_reason(error)}", path=str(source)) from None
    if not exists:
        raise InputError("no such file or folder", path=str(source))
    kind = detect_format(source)
    try:
        if kind == "jsonl":
            yield from _iter_jsonl(source)
        elif kind == "parquet":
            yield from _iter_parquet(source)
        elif kind == "csv":
            yield from _iter_csv(source)
        else:
            yield from _iter_datasets(source)
    except OSError as error:  # permission denied, an I/O error, a file removed while read
        raise InputError(f"cannot read: {_os_reason(error)}", path=str(source)) from None


def _os_reason(error: OSError) -> str:
    """An OSError's reason without the path it repeats (the InputError names the file)."""
    return error.strerror or str(error) or type(error).__name__


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Row]]:
    if path.suffix.lower() != ".gz":
        with open(path, "rb") as handle:
            yield from _jsonl_lines(path, handle)
        return
    import gzip
    import zlib

    good = 0  # the last line read whole, for the message
    try:
        with gzip.open(path, "rb") as handle:
            for where, row in _jsonl_lines(path, handle):
                good = int(where.rsplit(":", 1)[1])
                yield where, row
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        after = f"after line {good}, the last one read whole" if good else "before its first line"
        raise InputError(
            f"the gzip file is truncated or damaged ({error or type(error).__name__}); it ends "
            f"{after}. Compress it again, or give the uncompressed .jsonl",
            path=str(path),
        ) from None


def _jsonl_lines(path: Path, handle: Any) -> Iterator[tuple[str, Row]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise InputError(f"not valid JSON ({error})", path=str(path), line=number) from None
        if not isinstance(row, dict):
            raise InputError(
                f"each line must be a JSON object, got {type(row).__name__}",
                path=str(path),
                line=number,
            )
        yield f"{path}:{number}", row


def _iter_parquet(path: Path) -> Iterator[tuple[str, Row]]:
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except Exception as error:  # pyarrow raises several types for a corrupt file
            raise InputError(f"cannot read Parquet: {error}", path=str(file)) from None
        index = 0
        batches = parquet.iter_batches(batch_size=4096)
        while True:
            try:
                batch = next(batches, None)
            except Exception as error:  # a damaged row group: pyarrow's OSError or ArrowInvalid
                raise InputError(f"cannot read Parquet after row {index}: {error}",
                                 path=str(file)) from None
            if batch is None:
                break
            for row in batch.to_pylist():
                yield f"{file}:row {index}", row
                index += 1


def _iter_csv(path: Path) -> Iterator[tuple[str, Row]]:
    try:
        yield from _csv_rows(path)
    except UnicodeDecodeError:
        line, where = _first_undecodable(path)
        raise InputError(
            f"not UTF-8 text{where}; save the file as UTF-8", path=str(path), line=line
        ) from None


def _first_undecodable(path: Path) -> tuple[int | None, str]:
    """The line (1-based) of the first bytes that are not UTF-8, and which byte at which
    column: a character cannot span a newline, so each line decodes on its own."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                column = len(raw[: error.start].decode("utf-8", "replace")) + 1
                return number, f" (byte 0x{raw[error.start]:02x} at column {column})"
    return None, ""


def _csv_rows(path: Path) -> Iterator[tuple[str, Row]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # utf-8-sig: a byte-order mark (as spreadsheets write) is not part of the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if reader.fieldnames is None:
            return
        width = len(reader.fieldnames)
        for row in reader:
            # DictReader pads a short row with None values and files a long row's extras under
            # the key None; a real empty field reads as "".
            if None in row or any(value is None for value in row.values()):
                raise InputError(
                    f"expected {width} fields as in the header, found a different number",
                    path=str(path),
                    line=reader.line_num,
                )
            yield f"{path}:{reader.line_num}", dict(row)


def _iter_datasets(path: Path) -> Iterator[tuple[str, Row]]:
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a core dependency
        raise InputError("reading a `datasets` folder needs `pip install datasets`") from error
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as error:  # a damaged folder: missing or unreadable files
        raise InputError(f"cannot read the `datasets` folder: {error}", path=str(path)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise InputError(
                f"the folder holds splits {sorted(loaded)}; point at one split's folder",
                path=str(path),
            )
        loaded = next(iter(loaded.values()))
    for index, row in enumerate(loaded):
        yield f"{path}:row {index}", dict(row)
