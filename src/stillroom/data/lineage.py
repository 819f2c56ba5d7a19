"""Lineage: where a generated row came from, kept in its ``metadata``.

Read and write it through :mod:`stillroom.data.rows`, which re-exports everything here.

Every generation stage writes one entry under ``metadata[<stage name>]`` with at least:

* ``method``: the method (``self_instruct``, ``evol_instruct``, ...);
* ``step``: which step of the method made the row (a mutation name, a round, ...);
* ``parent_id``: the id of the row it was made from (``None`` for a row made from nothing);
* ``seed_id``: the id of the original seed at the root of its tree (itself for a seed);
* ``model``: the model that wrote it;
* ``template``: the prompt template's name and version, e.g. ``self_instruct.instruction@1a2b3c4d``.

Generated rows get ids from their content and lineage (:func:`derived_id`), so a rerun gives the
same ids and a child's id never collides with its parent's.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stillroom.data.row_types import Row


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template with a name; its version is a hash of its text, so editing the text
    changes the version recorded in every row it produces."""

    name: str
    text: str

    @property
    def version(self) -> str:
        return f"{self.name}@{hashlib.sha256(self.text.encode()).hexdigest()[:8]}"

    def fields(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.text) if name]

    def format(self, **values: Any) -> str:
        return self.text.format(**values)


def derived_id(prefix: str, *parts: Any) -> str:
    """A stable id for a generated row: ``prefix`` plus a hash of what determines it."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


def row_id(row: Row, fallback: Any = None) -> str | None:
    """The row's ``id`` as text, or ``fallback``."""
    value = row.get("id", fallback)
    return None if value is None else str(value)


def row_key(row: Row) -> str:
    """The row's id, or a stable id made from its prompt (``messages`` first, else ``prompt``):
    the key of a row that may have no id (to seed its randomness, to name what it yields)."""
    return row_id(row) or derived_id("prompt", row.get("messages") or row.get("prompt"))


def seed_id_of(row: Row, stage_names: tuple[str, ...] = ()) -> str | None:
    """The root seed id: the ``seed_id`` in the row's lineage when it has one, else its own id."""
    for entry in (row.get("metadata") or {}).values():
        if isinstance(entry, dict) and entry.get("seed_id") is not None:
            return str(entry["seed_id"])
    return row_id(row)


def with_lineage(
    row: Row,
    stage_name: str,
    *,
    method: str,
    step: str,
    parent_id: str | None,
    seed_id: str | None,
    model: str | list[str] | None,
    template: PromptTemplate | str | None,
    **extra: Any,
) -> Row:
    """A copy of ``row`` with this stage's lineage entry added to its ``metadata``."""
    metadata = dict(row.get("metadata") or {})
    metadata[stage_name] = {
        "method": method,
        "step": step,
        "parent_id": parent_id,
        "seed_id": seed_id,
        "model": model,
        "template": template.version if isinstance(template, PromptTemplate) else template,
        **extra,
    }
    out = dict(row)
    out["metadata"] = metadata
    return out


LINEAGE_KEYS = ("method", "step", "parent_id", "seed_id", "model", "template")
