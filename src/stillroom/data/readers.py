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
    """Yield ``(where, row)`` for every row of the input at ``path``."""
    source = Path(path)
    if not source.exists():
        raise InputError("no such file or folder", path=str(source))
    kind = detect_format(source)
    if kind == "jsonl":
        yield from _iter_jsonl(source)
    elif kind == "parquet":
        yield from _iter_parquet(source)
    elif kind == "csv":
        yield from _iter_csv(source)
    else:
        yield from _iter_datasets(source)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Row]]:
    opener: Any = open
    if path.suffix == ".gz":
        import gzip

        opener = gzip.open
    with opener(path, "rb") as handle:
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
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield f"{file}:row {index}", row
                index += 1


def _iter_csv(path: Path) -> Iterator[tuple[str, Row]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as handle:
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
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise InputError(
                f"the folder holds splits {sorted(loaded)}; point at one split's folder",
                path=str(path),
            )
        loaded = next(iter(loaded.values()))
    for index, row in enumerate(loaded):
        yield f"{path}:row {index}", dict(row)
