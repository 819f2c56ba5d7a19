"""Rows (dicts) to Arrow tables and back, tolerant of the shapes LLM data takes.

``pa.Table.from_pylist`` takes its columns from the first row only and fails on a struct with no
fields; rows here gain columns as they go through stages, and ``metadata`` may be ``{}``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pyarrow as pa

log = logging.getLogger(__name__)

Row = dict[str, Any]


def _has_empty_struct(data_type: pa.DataType) -> bool:
    if pa.types.is_struct(data_type):
        return data_type.num_fields == 0 or any(
            _has_empty_struct(data_type.field(i).type) for i in range(data_type.num_fields)
        )
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return _has_empty_struct(data_type.value_type)
    return False


def _column(name: str, values: list[Any]) -> pa.Array:
    try:
        array = pa.array(values)
        if not _has_empty_struct(array.type):
            return array
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        log.warning("column %r mixes types; it is stored as JSON text", name)
    return pa.array([as_json_text(value) for value in values], type=pa.string())


def as_json_text(value: Any) -> str | None:
    """A value of a column stored as JSON text (null stays null)."""
    return None if value is None else orjson.dumps(value, default=str).decode()


def conflicting_fields(schemas: list[pa.Schema]) -> set[str]:
    """Columns whose types cannot be unified across ``schemas``."""
    names = {name for schema in schemas for name in schema.names}
    bad = set()
    for name in names:
        fields = [pa.schema([schema.field(name)]) for schema in schemas if name in schema.names]
        try:
            unify(fields)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            bad.add(name)
    return bad


def rows_to_table(rows: list[Row], schema: pa.Schema | None = None) -> pa.Table:
    """A table whose columns are every key seen in ``rows``, in first-seen order."""
    if schema is not None:
        return pa.Table.from_pylist(rows, schema=schema)
    names: dict[str, None] = {}
    for row in rows:
        for name in row:
            if name not in names:
                names[name] = None
    columns = [_column(name, [row.get(name) for row in rows]) for name in names]
    return pa.Table.from_arrays(columns, names=list(names))


def unify(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema every shard can be cast to (nulls widen, struct fields merge)."""
    return pa.unify_schemas(schemas, promote_options="permissive")
