"""What ``select`` reads from a row, and how it shows a value in a reason.

* :func:`text_to_embed`: the text the clusters and kcenter methods embed (a named column, or
  the row's prompt: :data:`PROMPT_COLUMNS`);
* :func:`answer_length`: what ``prefer: longest`` ranks by (:data:`ANSWER_COLUMNS`);
* :func:`preference_value`: what ``prefer: COLUMN`` ranks by;
* :func:`is_missing`, :func:`kind_of`, :func:`shown_number`, :func:`shown_value`,
  :func:`stored_value`: a value as the steps test it, a reason shows it and the metadata keeps it.

The texts of a cell come from the row model (:func:`stillroom.data.rows.cell_texts`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from stillroom.data.rows import Row, cell_texts, row_answer

PROMPT_COLUMNS = ("prompt", "instruction", "question", "problem", "messages")
ANSWER_COLUMNS = ("completion", "response", "output", "messages")


def is_missing(value: Any) -> bool:
    """No value: absent (None) or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def kind_of(value: Any) -> str:
    """A value's kind as a reason names it: true/false, number, text, or its type's name."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


def shown_number(value: float) -> str:
    """A number as a reason shows it: 4, 0.2134, 1.235e+05."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def shown_value(value: Any) -> str:
    """A value in a reason: true, 3, "yes"."""
    if isinstance(value, bool | str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return shown_number(value)
    return repr(value)


def stored_value(value: Any) -> Any:
    """A value for the metadata: numbers as floats, so every row has one type."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _text(value: Any, roles: Sequence[str]) -> str | None:
    """The text of a cell: a text, texts joined, or a list of messages' turns of ``roles`` (all
    turns when none has one of those roles). None when the cell holds no text."""
    texts = cell_texts(value, roles) or cell_texts(value)
    return "\n".join(texts) if texts else None


def text_to_embed(row: Row, column: str | None) -> str | None:
    """What is embedded for ``row``: ``column``'s text, or (``None``) the first prompt-like
    column the row has; ``None`` when there is no text or only blanks."""
    if column is not None:
        text = _text(row.get(column), ("user",))
        return text if text and text.strip() else None
    for name in PROMPT_COLUMNS:
        text = _text(row.get(name), ("user",))
        if text and text.strip():
            extra = row.get("input") if name == "instruction" else None
            if isinstance(extra, str) and extra.strip():
                text = f"{text}\n{extra}"
            return text
    return None


def answer_length(row: Row) -> int | None:
    """Characters in the row's answer: its ``completion`` (a text or an assistant message list)
    or the final assistant turn of its ``messages`` (:func:`stillroom.data.rows.row_answer`), else
    its ``response`` or ``output``; ``None`` when it has none."""
    text = row_answer(row)
    for name in ("response", "output"):
        if text is None:
            text = _text(row.get(name), ("assistant",))
    return None if text is None else len(text)


def preference_value(value: Any) -> float | None:
    """How a ``prefer: COLUMN`` value ranks (higher first): a number itself, true 1 and false 0,
    a text or a list by its length in characters; ``None`` for no value."""
    if is_missing(value):
        return None
    if isinstance(value, bool | int | float):
        return float(value)
    text = _text(value, ("assistant",))
    return None if text is None else float(len(text))
