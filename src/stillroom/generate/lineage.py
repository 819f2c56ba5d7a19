"""Lineage: moved to :mod:`stillroom.data.lineage`; read and write it through
:mod:`stillroom.data.rows`. These names stay importable from here for older code."""

from __future__ import annotations

from stillroom.data.lineage import (
    LINEAGE_KEYS,
    PromptTemplate,
    derived_id,
    row_id,
    row_key,
    seed_id_of,
    with_lineage,
)
from stillroom.data.rows import Row

__all__ = [
    "LINEAGE_KEYS",
    "PromptTemplate",
    "Row",
    "derived_id",
    "row_id",
    "row_key",
    "seed_id_of",
    "with_lineage",
]
