"""``echo_filter``: drop answers that mostly repeat their prompt.

A small teacher often "answers" by restating the question (SmolLM2-135M does it on a share of
simple prompts), and such a row teaches a student to echo. The check is lexical: the share of the
answer's word n-grams that also occur in the prompt. An answer may quote some of its question
(a restated premise, a name); one made mostly of it is an echo::

    - type: echo_filter
      max_share: 0.6      # drop when at least this share of the answer's word 3-grams is in the prompt
      ngram: 3

Each row gets ``echo_share`` (the share, 0-1; null for an answer shorter than ``ngram`` words,
which is never dropped by this check: too short to tell). A dropped row goes to ``dropped/`` with
``answer repeats the prompt (83% of its 3-grams)``. The stage reads the prompt and the answer
through :mod:`stillroom.data.rows`, so it takes every row shape (``prompt`` + ``completion``,
``messages``, conversational prompts).

This file is also the README's worked example of adding a stage (see "Adding a stage").
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from stillroom.data.rows import Row, prompt_text, row_answer
from stillroom.pipeline.stage import Drop, RowStage, StageContext, register_stage

_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The lowercased word n-grams of ``text``, in order (repeats kept)."""
    words = _WORD.findall(text.lower())
    return [tuple(words[start : start + n]) for start in range(len(words) - n + 1)]


def echo_share(prompt: str, answer: str, n: int) -> float | None:
    """The share of the answer's word n-grams found in the prompt; None when the answer has
    fewer than ``n`` words."""
    grams = word_ngrams(answer, n)
    if not grams:
        return None
    in_prompt = set(word_ngrams(prompt, n))
    return sum(gram in in_prompt for gram in grams) / len(grams)


@register_stage
class EchoFilter(RowStage):
    """Drop rows whose answer mostly repeats the prompt."""

    type: Literal["echo_filter"] = "echo_filter"
    max_share: float = Field(
        default=0.6, gt=0, le=1,
        description="Drop when at least this share of the answer's n-grams is in the prompt.",
    )
    ngram: int = Field(default=3, ge=1, le=10, description="Words per n-gram.")

    def check_row(self, row: Row) -> str | None:
        if prompt_text(row) is None:
            return "the row has no prompt to compare with (`prompt` or `messages`)"
        if row_answer(row) is None:
            return "the row has no answer (`completion`, or `messages` ending with the assistant)"
        return None

    async def process(self, row: Row, ctx: StageContext) -> Row | Drop:
        prompt, answer = prompt_text(row), row_answer(row)
        if prompt is None or answer is None:  # from an earlier stage: it fails, with the reason
            raise ValueError(self.check_row(row))
        share = echo_share(prompt, answer, self.ngram)
        if share is not None and share >= self.max_share:
            return Drop(f"answer repeats the prompt ({share:.0%} of its {self.ngram}-grams)")
        return {**row, "echo_share": None if share is None else round(share, 4)}

    def summary_columns(self) -> list[str]:
        return ["echo_share", "drop_reason"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Rows checked (kept with a share, or dropped as echoes) and how many were dropped."""
        dropped = sum(1 for row in rows if str(row.get("drop_reason") or "").startswith(
            "answer repeats the prompt"))
        kept = sum(1 for row in rows if row.get("echo_share") is not None)
        return {"rows": kept + dropped, "echoes_dropped": dropped, "max_share": self.max_share}

    def result_line(self, figures: dict[str, Any]) -> str | None:
        return (f"echo filter: {figures['echoes_dropped']:,} of {figures['rows']:,} answers "
                f"dropped as repeats of their prompt")
