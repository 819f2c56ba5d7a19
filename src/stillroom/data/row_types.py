"""The row's types (in a module of their own so that the row model's parts, lineage among them,
can name them without importing one another). Import them from :mod:`stillroom.data.rows`."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]
"""A row: column name -> value, as read from JSONL or Parquet and written to ``data/``."""
Message = dict[str, Any]
"""A chat message: ``{"role": ..., "content": ...}``."""
