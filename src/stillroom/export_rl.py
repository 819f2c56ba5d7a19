"""An RL-ready export of verifiable tasks: ``stillroom export rl DATA -o FILE``.

Each row of stillroom data (an output folder's ``data/``, JSONL, Parquet, ...) becomes one task
that an RL trainer reads as is:

* ``prompt``: TRL's conversational prompt, a list of ``{role, content}`` turns (the trainer
  applies the policy's chat template), or with ``prompt_format="standard"`` the prompt text;
* the reference columns the verifier reads (``answer`` for ``math``/``exact``, ``tests`` for
  ``code``, ``schema`` for a per-row ``json_schema``), copied unchanged;
* ``verifier``: the registered verifier's name, and ``verifier_options``: its options as JSON
  text (text rather than a nested object so that the column has one Arrow type on every row:
  a struct column would give rows with other options null-filled keys);
* ``id`` when the row has one.

The file is JSONL (``.jsonl``) or Parquet (``.parquet``), as ``datasets.load_dataset("json" |
"parquet", data_files=FILE)`` reads it. A teacher's ``completion``, ``reasoning`` and metadata
are left out: a task is the question and how to check an answer, not an answer.

To train on it: ``stillroom train grpo`` with ``data: FILE`` and no ``rewards`` reads each row's
verifier; in TRL directly, pass :class:`stillroom.verify.rewards.RowVerifierReward` () as the
reward function (TRL hands it the ``verifier``, ``verifier_options`` and reference columns).

Every row is checked before anything is written: a row without a prompt, or without a column
the verifier needs, is an error naming the row (and the column). A column whose rows hold text
on some and numbers on others (``"4"`` and ``6``) is written as text on every row, as the
verifiers read it anyway (``str(value)``): Arrow, and so ``datasets`` and TRL, takes one type
per column. The output may not be the source, nor lie in the source folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from stillroom.data.rows import Row
from stillroom.errors import ConfigError, InputError
from stillroom.verify.rewards import OPTIONS_COLUMN, VERIFIER_COLUMN, RewardSpec, build

PromptFormat = Literal["conversational", "standard"]
SUFFIXES = (".jsonl", ".parquet")


def data_path(source: Path) -> Path:
    """What is read of ``source``: a stillroom output folder's ``data/``, else ``source``."""
    return source / "data" if source.is_dir() and (source / "data").is_dir() else source


def read_source(source: Path) -> list[Row]:
    """The rows of a data file or folder; a stillroom output folder is read from ``data/``."""
    from stillroom.data.readers import iter_rows

    source = data_path(source)
    rows = [row for _, row in iter_rows(source)]
    if not rows:
        raise InputError("no rows to export", path=str(source))
    return rows


def rl_rows(rows: list[Row], verifier: str, options: dict[str, Any] | None = None,
            prompt_format: PromptFormat = "conversational", where: str = "the data") -> list[Row]:
    """The tasks of ``rows`` (see the module docstring); a bad row is an error naming it."""
    from stillroom.train.grpo import prompt_turns

    options = dict(options or {})
    try:
        spec = RewardSpec(verifier=verifier, options=options)
    except ValidationError as error:  # an unknown verifier
        raise ConfigError(error.errors()[0]["msg"].removeprefix("Value error, "),
                          key="verifier") from None
    reward = build(spec)
    reward.check_rows(rows, where)
    columns = reward.verifier.required_columns
    text_options = json.dumps(options, sort_keys=True)
    tasks = []
    for index, row in enumerate(rows):
        try:
            turns = prompt_turns(row)
        except ValueError as problem:
            ident = f" (id {row['id']!r})" if row.get("id") is not None else ""
            raise InputError(f"row {index}{ident}: {problem}", path=where) from None
        if prompt_format == "conversational":
            prompt: Any = turns
        elif len(turns) == 1 and turns[0]["role"] == "user":
            prompt = turns[0]["content"]
        else:
            raise InputError(f"row {index}: its prompt has {len(turns)} turns; a standard "
                             "(text) prompt holds one user turn: export it as conversational",
                             path=where)
        task: Row = {"id": row["id"]} if row.get("id") is not None else {}
        task["prompt"] = prompt
        task.update({column: row[column] for column in columns})
        task[VERIFIER_COLUMN] = verifier
        task[OPTIONS_COLUMN] = text_options
        tasks.append(task)
    return tasks


def one_type_columns(rows: list[Row], where: str, columns: list[str] | None = None) -> list[Row]:
    """``rows`` with each column (of ``columns``, or all) of one Arrow type on every row.

    A column mixing plain values (text, numbers, booleans) becomes text on every row: ``"4"``
    and ``6`` as ``"4"`` and ``"6"``, which is how the verifiers read a reference anyway
    (``str(value)``); left to Arrow it would fail, or turn ``6`` into ``6.0`` beside a float.
    Any other mix (a list on one row, text on another) is an InputError naming the column.
    """
    import pyarrow as pa

    names = columns if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    as_text = []
    for name in names:
        kinds = {type(row.get(name)) for row in rows} - {type(None)}
        if len(kinds) <= 1:
            continue
        if kinds <= {str, int, float, bool}:
            as_text.append(name)
            continue
        try:
            pa.array([row.get(name) for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            found = ", ".join(sorted(kind.__name__ for kind in kinds))
            raise InputError(f"the column `{name}` holds values of different types on different "
                             f"rows ({found}); give it one type on every row", path=where) from None
    if not as_text:
        return rows
    return [{**row, **{name: str(row[name]) for name in as_text if row.get(name) is not None}}
            for row in rows]


def check_output(source: Path, out: Path) -> None:
    """ConfigError (key ``-o``) unless ``out`` can be written without touching ``source``:
    the output is the source, or lies in the source folder (it would be read as data next
    time), or is a folder."""
    if out.suffix not in SUFFIXES:
        raise ConfigError(f"the output must end in {' or '.join(SUFFIXES)}, not {out.name!r}",
                          key="-o")
    if out.is_dir():
        raise ConfigError(f"the output {str(out)!r} is a folder; name a file", key="-o")
    target, read = out.resolve(), data_path(source).resolve()
    if target == read or (out.exists() and source.exists() and os.path.samefile(out, source)):
        raise ConfigError(f"the output {str(out)!r} is the source: name another file", key="-o")
    if read.is_dir() and target.is_relative_to(read):
        raise ConfigError(f"the output {str(out)!r} lies in the source folder {str(source)!r}, "
                          "where it would be read as data: write it elsewhere", key="-o")


def write_tasks(tasks: list[Row], out: Path) -> Path:
    """``tasks`` as JSONL or Parquet by ``out``'s suffix, written whole or not at all; a path
    that cannot be written is a ConfigError naming it (nothing left behind)."""
    if out.suffix not in SUFFIXES:
        raise ConfigError(f"the output must end in {' or '.join(SUFFIXES)}, not {out.name!r}",
                          key="-o")
    tasks = one_type_columns(tasks, str(out))
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".jsonl":
            tmp.write_text("".join(json.dumps(task, ensure_ascii=False) + "\n" for task in tasks),
                           encoding="utf-8")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pa.Table.from_pylist(tasks)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                raise InputError(f"the rows do not fit one Parquet schema ({error}); a column "
                                 "holds different types on different rows: export JSONL",
                                 path=str(out)) from None
            pq.write_table(table, tmp)
        tmp.replace(out)
    except OSError as error:
        with contextlib.suppress(OSError):  # e.g. the folder itself could not be made
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {str(out)!r}: {error.strerror or error}", key="-o") from None
    return out


def export_rl(source: str | os.PathLike[str], out: str | os.PathLike[str], *, verifier: str,
              options: dict[str, Any] | None = None,
              prompt_format: PromptFormat = "conversational") -> Path:
    """Export the verifiable tasks of ``source`` to ``out``; returns ``out``."""
    path, target = Path(source), Path(out)
    check_output(path, target)
    tasks = rl_rows(read_source(path), verifier, options, prompt_format, where=str(path))
    return write_tasks(tasks, target)


__all__ = ["PromptFormat", "check_output", "data_path", "export_rl", "one_type_columns", "read_source",
           "rl_rows", "write_tasks"]
