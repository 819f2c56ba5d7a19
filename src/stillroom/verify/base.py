"""The verifier protocol: a check of one row's answer that needs no model.

A verifier looks at a row (its ``completion`` and whatever the check needs: a reference
``answer``, ``tests``, a schema) and returns a :class:`Verdict`: passed or not, and why. The
``reward`` is the same judgement as a number, for rejection sampling and RL-style use.

A verifier never raises for a bad answer (a wrong, unparseable or hostile answer is a failed
verdict with its reason); it raises :class:`VerifierInputError` only when the row itself cannot be
checked (no reference answer, malformed tests), which the caller reports before any work.

A verifier reads its answer column as text. A row may hold its answer in another shape (see
:mod:`stillroom.data.rows`): an assistant message list in ``completion``, or, with no
``completion`` column, the final assistant turn of ``messages``. A caller passes
:meth:`Verifier.answer_row` of such a row, which puts the answer text in the column.

A verifier grades the final answer, never the reasoning trace. A trace a backend returned apart
is in the row's ``reasoning`` column, which no verifier reads. A trace written inline
(``<think>...</think>`` before the answer) is cut off by :meth:`Verifier.verify` before the
check itself (:meth:`Verifier.verify_answer`) sees the text, so every caller (the ``verify``
stage, rejection sampling, evaluation, RL rewards) grades the same answer part; a trace that was
opened and never closed holds no answer and is a failed verdict with that reason
(``details["reasoning_ended"]`` False), never graded as if it were one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from stillroom.data.rows import ANSWER_COLUMN, Row, row_answer
from stillroom.llm.reasoning import final_answer
from stillroom.registry import Registry


class VerifierInputError(ValueError):
    """The row cannot be checked by this verifier (a missing or malformed column)."""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def reward(self) -> float:
        return 1.0 if self.passed else 0.0


class Verifier(ABC):
    """One kind of check. Subclasses register under a name with :data:`verifiers`."""

    name: str = ""
    # Columns the row must have, besides the answer column (checked before any work).
    required_columns: tuple[str, ...] = ()

    def __init__(self, answer_column: str = "completion"):
        self.answer_column = answer_column

    def answer_row(self, row: Row) -> Row:
        """``row`` with its answer as text in ``answer_column`` (read by
        :func:`stillroom.data.rows.row_answer` from an assistant message list, or from the final
        assistant turn of ``messages``); ``row`` itself when the column holds text already or
        there is no answer to read."""
        value = row.get(self.answer_column)
        if isinstance(value, str):
            return row
        text = row_answer(row, self.answer_column)
        return row if text is None else {**row, self.answer_column: text}

    def check_row(self, row: Row) -> str | None:
        """What makes ``row`` uncheckable, if anything (named column and reason)."""
        for column in (self.answer_column, *self.required_columns):
            if row.get(column) is None:
                also = (" (or `messages` ending with the assistant's answer)"
                        if column == ANSWER_COLUMN == self.answer_column else "")
                return f"the row needs a `{column}` column{also} for the {self.name} verifier"
        return None

    def verify(self, row: Row) -> Verdict:
        """The verdict on the final answer in ``row[self.answer_column]``: an inline reasoning
        trace is cut off first, and a trace that never ended fails (see the module docstring)."""
        text = row.get(self.answer_column)
        if isinstance(text, str):
            answer, why = final_answer(text)
            if answer is None:
                return Verdict(False, why, {"reasoning_ended": False})
            if answer is not text:
                row = {**row, self.answer_column: answer}
        return self.verify_answer(row)

    @abstractmethod
    def verify_answer(self, row: Row) -> Verdict:
        """The verdict on ``row[self.answer_column]``, which holds no inline trace."""

    def reward(self, row: Row) -> float:
        return self.verify(row).reward


verifiers: Registry[type[Verifier]] = Registry("verifier")
