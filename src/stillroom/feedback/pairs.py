"""``preference_pairs``: rated completions -> preference pairs for DPO-style training.

    - type: preference_pairs
      strategy: random_lower     # the default; or best_worst, all_pairs
      min_margin: 0              # a pair whose scores differ by less is not made
      aspects: [helpfulness, honesty, instruction_following, truthfulness]   # default: all present

Input: a row with ``completions`` (texts) and ``ratings`` aligned with them, each rating a number
or an aspect -> rating dict (UltraFeedback rates four aspects, 1-5; ``ultrafeedback_judge`` and
the released UltraFeedback data write them as text, "4" or "N/A"). A completion's *score* is its
number, or the mean of its aspects. Output per pair, in the format TRL's ``DPOTrainer`` reads:
``prompt``, ``chosen``, ``rejected``, ``score_chosen``, ``score_rejected``, plus
``chosen_index``/``rejected_index`` (positions in ``completions``). With ``prompt_column:
messages`` (or ``auto`` on a row that has ``messages``) the output is TRL's conversational
format: ``prompt`` is the conversation (trailing assistant turns removed) and ``chosen`` and
``rejected`` are one-message assistant lists.

Strategies:

* ``random_lower`` (the default; how ``ultrafeedback_binarized`` was made): chosen = the highest
  score, rejected = a random completion scored strictly lower (and at least ``min_margin`` lower).
  UltraFeedback's completions come in teacher order, so breaking a tie at the top by position would
  favour the first teacher: a tie at the top is broken at random instead (``top_tie: drop`` drops
  such rows). Every random choice is seeded with the row's id, so reruns make the same pairs.
* ``best_worst``: chosen = the highest score, rejected = the lowest. When several completions share
  the top score, which one is "best" is a coin toss and the pair says nothing about why it won, so
  by default such a row is dropped (``top_tie: random`` picks one at random instead). Ties at the
  bottom are harmless (any of them is equally worst) and are broken at random.
* ``all_pairs``: every pair whose scores differ by at least ``min_margin`` (and by more than 0),
  one output row each, with ids derived from the row's id and the two positions.

What is left out and what is dropped, never silently:

* A completion whose rating is missing, ``None``, not a number (``True``, ``"4"``, NaN), or a dict
  missing one of the aspects, is left out; ``metadata[<stage>].excluded`` lists each with its
  reason. An aspect whose value is the text ``"N/A"`` (UltraFeedback's judge answers N/A for
  aspects that do not apply, e.g. honesty on a task with no claims) is left out of that
  completion's mean; a completion with every aspect N/A is left out. An empty completion text is
  left out too.
* The row is dropped (kept whole in ``dropped/``, with the reason) when fewer than 2 completions
  are left, when all scores are equal, on an ambiguous top tie (above), or when no pair reaches
  ``min_margin``.
* ``completions`` and ``ratings`` (or ``completion_sources``) of different lengths fail the row:
  they are not aligned, so any pair made from them could be wrong.

Scores are compared with a tolerance of 1e-9, so a mean such as 13/3 ties with itself however it
was summed.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from stillroom.data.rows import (
    Row,
    answer_cell,
    derived_id,
    is_conversation,
    pair_prompt,
    row_id,
    seed_id_of,
    with_lineage,
)
from stillroom.pipeline.stage import Dropped, RowFailure, RowStage, StageContext, register_stage

Strategy = Literal["random_lower", "best_worst", "all_pairs"]
TopTie = Literal["random", "drop"]

TOLERANCE = 1e-9
NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Pair:
    chosen_index: int
    rejected_index: int
    score_chosen: float
    score_rejected: float

    @property
    def margin(self) -> float:
        return self.score_chosen - self.score_rejected


@dataclass
class PairsResult:
    """What :func:`binarize` made of one row's ratings."""

    pairs: list[Pair] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)  # {index, reason}
    drop_reason: str | None = None
    top_tie: int = 0  # how many completions share the top score
    aspects: list[str] | None = None  # the aspects averaged, when ratings are dicts


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a real number (bools are not).

    numbers.Real also takes numpy scalars, which ratings read back from arrays may be.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _number_or_numeric_text(value: Any) -> float | None:
    """An aspect rating: a number, or a number written as text ("4"), as the released
    UltraFeedback data and our ``ultrafeedback_judge`` store them (a column holding "N/A" beside
    numbers must be text)."""
    if isinstance(value, str):
        try:
            return _number(float(value.strip()))
        except ValueError:
            return None
    return _number(value)


def score_of(rating: Any, aspects: list[str] | None = None) -> tuple[float | None, str | None]:
    """One completion's score and, when it has none, why.

    A number is its own score. A dict is averaged over ``aspects`` (default: its own keys),
    leaving out aspects valued "N/A"; an aspect may be a number or numeric text ("4"); a missing,
    null or non-numeric aspect gives no score. A bare rating must be a number: text there is more
    likely an unparsed judge answer than a rating.
    """
    if rating is None:
        return None, "rating is missing"
    if isinstance(rating, dict):
        names = list(aspects) if aspects is not None else list(rating)
        if not names:
            return None, "rating has no aspects"
        values: list[float] = []
        for name in names:
            if name not in rating:
                return None, f"aspect {name!r} is missing"
            value = rating[name]
            if value is None:
                return None, f"aspect {name!r} is null"
            if isinstance(value, str) and value.strip().lower() == NOT_APPLICABLE:
                continue
            number = _number_or_numeric_text(value)
            if number is None:
                return None, f"aspect {name!r} is not a number: {value!r}"
            values.append(number)
        if not values:
            return None, "every aspect is N/A"
        return sum(values) / len(values), None
    if aspects is not None:
        return None, f"rating is {rating!r}, not a dict of the aspects {aspects}"
    number = _number(rating)
    if number is None:
        return None, f"rating is not a number: {rating!r}"
    return number, None


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE


def binarize(
    completions: list[Any],
    ratings: list[Any],
    *,
    strategy: Strategy = "random_lower",
    min_margin: float = 0.0,
    aspects: list[str] | None = None,
    rng: random.Random | None = None,
    top_tie: TopTie | None = None,
) -> PairsResult:
    """Preference pairs from aligned ``completions`` and ``ratings``; see the module docstring.

    ``top_tie`` defaults to ``random`` for ``random_lower`` and ``drop`` for ``best_worst``.
    Raises ValueError when the two lists differ in length.
    """
    if len(completions) != len(ratings):
        raise ValueError(
            f"{len(completions)} completions but {len(ratings)} ratings; they must be aligned"
        )
    rng = rng or random.Random(0)
    result = PairsResult()
    has_dicts = any(isinstance(rating, dict) for rating in ratings)
    if has_dicts:
        # Default: every aspect any completion of the row was rated on, so all are averaged over
        # the same aspects (a completion missing one is left out rather than scored on fewer).
        names = aspects or list(dict.fromkeys(
            key for rating in ratings if isinstance(rating, dict) for key in rating
        ))
        result.aspects = list(names)
    elif aspects is not None:
        result.aspects = list(aspects)
    valid: list[tuple[int, float]] = []
    for index, (text, rating) in enumerate(zip(completions, ratings, strict=True)):
        score: float | None
        reason: str | None
        if not isinstance(text, str) or not text.strip():
            score, reason = None, "completion is empty"
        elif has_dicts and not isinstance(rating, dict) and rating is not None:
            score, reason = None, f"rating is {rating!r} among aspect ratings"
        else:
            score, reason = score_of(rating, result.aspects)
        result.scores.append(score)
        if score is None:
            result.excluded.append({"index": index, "reason": reason})
        else:
            valid.append((index, score))

    if len(valid) < 2:
        result.drop_reason = (
            f"fewer than 2 rated completions ({len(valid)} of {len(ratings)} have a usable rating)"
        )
        return result
    top = max(score for _, score in valid)
    bottom = min(score for _, score in valid)
    tops = [index for index, score in valid if _same(score, top)]
    result.top_tie = len(tops)
    if _same(top, bottom):
        result.drop_reason = f"all {len(valid)} rated completions have the same score ({top:g})"
        return result
    margin_ok = min_margin - TOLERANCE

    if strategy == "all_pairs":
        for i, s_i in valid:
            for j, s_j in valid:
                if s_i - s_j > TOLERANCE and s_i - s_j >= margin_ok:
                    result.pairs.append(Pair(i, j, s_i, s_j))
        if not result.pairs:
            result.drop_reason = f"no pair of completions differs by min_margin {min_margin:g}"
        return result

    tie_rule = top_tie or ("random" if strategy == "random_lower" else "drop")
    if len(tops) > 1 and tie_rule == "drop":
        result.drop_reason = (
            f"{len(tops)} completions share the top score ({top:g}), so the chosen one would be "
            f"arbitrary ({strategy}, top_tie: drop)"
        )
        return result
    chosen = tops[0] if len(tops) == 1 else rng.choice(tops)

    if strategy == "random_lower":
        pool = [i for i, s in valid if top - s > TOLERANCE and top - s >= margin_ok]
        if not pool:
            result.drop_reason = (
                f"no completion scores at least min_margin {min_margin:g} below the best "
                f"({top:g}; lowest {bottom:g})"
            )
            return result
        rejected = rng.choice(pool)
    else:  # best_worst
        if top - bottom < margin_ok:
            result.drop_reason = (
                f"best ({top:g}) and worst ({bottom:g}) differ by {top - bottom:g}, less than "
                f"min_margin {min_margin:g}"
            )
            return result
        bottoms = [index for index, score in valid if _same(score, bottom)]
        rejected = bottoms[0] if len(bottoms) == 1 else rng.choice(bottoms)
    scores = dict(valid)
    result.pairs.append(Pair(chosen, rejected, scores[chosen], scores[rejected]))
    return result


@register_stage
class PreferencePairs(RowStage):
    type: Literal["preference_pairs"] = "preference_pairs"
    strategy: Strategy = Field(
        default="random_lower",
        description="random_lower (best vs a random lower one, as ultrafeedback_binarized), "
        "best_worst, or all_pairs.",
    )
    min_margin: float = Field(
        default=0.0, ge=0, description="Least score difference between chosen and rejected."
    )
    aspects: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Aspects averaged when ratings are dicts; default: every aspect present.",
    )
    top_tie: TopTie | None = Field(
        default=None,
        description="A tie for the top score: random (default for random_lower) or drop "
        "(default for best_worst).",
    )
    ratings_column: str = Field(default="ratings", description="Column of ratings.")
    completions_column: str = Field(default="completions", description="Column of texts.")
    prompt_column: Literal["auto", "prompt", "messages"] = Field(
        default="auto",
        description="prompt (plain text) or messages (TRL conversational format); auto: "
        "messages when the row has them.",
    )

    @model_validator(mode="after")
    def _check(self) -> PreferencePairs:
        if self.strategy == "all_pairs" and self.top_tie is not None:
            raise ValueError("top_tie has no effect with strategy all_pairs; remove it")
        return self

    # -- input -----------------------------------------------------------------------------------

    def _prompt_column(self, row: Row) -> str:
        if self.prompt_column != "auto":
            return self.prompt_column
        return "messages" if row.get("messages") is not None else "prompt"

    def check_row(self, row: Row) -> str | None:
        missing = [
            column
            for column in (self.completions_column, self.ratings_column, self._prompt_column(row))
            if row.get(column) is None
        ]
        if missing:
            return f"the row needs the column(s) {missing}; it has {sorted(row)}"
        for column in (self.completions_column, self.ratings_column):
            if not isinstance(row[column], list):
                return f"`{column}` must be a list, got {type(row[column]).__name__}"
        if self._prompt_column(row) == "messages":
            messages = row["messages"]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages
            ):
                return "`messages` must be a list of {role, content} objects"
            if not any(m["role"] != "assistant" for m in messages):
                return "`messages` holds no turn before the answers"
            return None
        if not isinstance(row["prompt"], str) and not is_conversation(row["prompt"]):
            return f"`prompt` must be text or a list of messages, got {type(row['prompt']).__name__}"
        return None

    def _prompt(self, row: Row) -> tuple[Any, bool]:
        """The output ``prompt`` and whether it is conversational."""
        return pair_prompt(row, self._prompt_column(row))

    # -- the stage -------------------------------------------------------------------------------

    async def process(self, row: Row, ctx: StageContext) -> list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        completions = row[self.completions_column]
        ratings = row[self.ratings_column]
        sources = row.get("completion_sources")
        if len(completions) != len(ratings):
            raise RowFailure(
                f"`{self.completions_column}` has {len(completions)} items but "
                f"`{self.ratings_column}` has {len(ratings)}; they must be aligned",
                kind="LengthMismatch",
            )
        if sources is not None and len(sources) != len(completions):
            raise RowFailure(
                f"`completion_sources` has {len(sources)} items but `{self.completions_column}` "
                f"has {len(completions)}; they must be aligned",
                kind="LengthMismatch",
            )
        prompt, conversational = self._prompt(row)
        key = row_id(row) or derived_id("prompt", prompt)
        result = binarize(
            completions,
            ratings,
            strategy=self.strategy,
            min_margin=self.min_margin,
            aspects=self.aspects,
            rng=ctx.rng(key),
            top_tie=self.top_tie,
        )

        def lineage(out: Row, pair: Pair | None) -> Row:
            def source(index: int | None) -> Any:
                return sources[index] if sources is not None and index is not None else None

            return with_lineage(
                out,
                ctx.stage_name,
                method="preference_pairs",
                step=self.strategy,
                parent_id=row_id(row),
                seed_id=seed_id_of(row) or key,
                model=None,
                template=None,
                strategy=self.strategy,
                min_margin=self.min_margin,
                margin=pair.margin if pair else None,
                scores=result.scores,
                excluded=result.excluded,
                aspects=result.aspects,
                top_tie=result.top_tie,
                chosen_source=source(pair.chosen_index if pair else None),
                rejected_source=source(pair.rejected_index if pair else None),
            )

        if result.drop_reason is not None:
            dropped = dict(row)
            dropped["id"] = key
            return [Dropped(lineage(dropped, None), result.drop_reason)]

        out_rows: list[Row | Dropped] = []
        for pair in result.pairs:
            out = dict(row)
            out["id"] = (
                key if self.strategy != "all_pairs"
                else derived_id("pair", key, pair.chosen_index, pair.rejected_index)
            )
            chosen = completions[pair.chosen_index]
            rejected = completions[pair.rejected_index]
            out["prompt"] = prompt
            out["chosen"] = answer_cell(chosen, conversational)
            out["rejected"] = answer_cell(rejected, conversational)
            out["score_chosen"] = pair.score_chosen
            out["score_rejected"] = pair.score_rejected
            out["chosen_index"] = pair.chosen_index
            out["rejected_index"] = pair.rejected_index
            out_rows.append(lineage(out, pair))
        return out_rows
