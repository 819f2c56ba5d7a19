"""Self-Instruct's novelty filter, made to scale: is a new instruction's ROUGE-L F1 above a
threshold with any instruction already in a growing pool?

The reference code scores every candidate against every pool entry with
``rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score``: it tokenizes both texts and
fills a full LCS table each time, so generating N instructions costs O(N^2) table fills. The
:class:`RougePool` makes exactly the same keep/drop decisions (and finds the same most similar
entry, with the same score) while computing an LCS for only a handful of entries:

* every text is tokenized once, with rouge-score's own tokenizer (so "the same tokens" means
  what it means to rouge-score: lower-cased ASCII letters and digits);
* ROUGE-L F1 is ``2 * lcs / (la + lb)`` and an LCS is at most the size of the two texts'
  bag-of-tokens intersection, so ``2 * |A & B| / (la + lb)`` bounds it from above. An inverted
  index from token to the entries that hold it counts those intersections with numpy, touching
  only entries that share a token with the candidate; an entry sharing none scores 0;
* only entries whose bound exceeds the threshold get an exact LCS, in order of decreasing bound,
  by a bit-parallel LCS (one pass over the entry, a few integer operations per token), and the
  F1 is then computed with rouge-score's own formula, so the float compared with the threshold
  is the one the plain loop compares.

:func:`plain_most_similar` is that plain loop, kept for tests and the benchmark
(``bench/rouge_filter.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rouge_score import rouge_scorer, scoring, tokenizers

# Bounds are computed in floats; a margin this wide keeps every entry whose exact F1 could
# exceed the threshold (float error in an F1 of short texts is ~1e-16).
_MARGIN = 1e-9


@dataclass(frozen=True, slots=True)
class Match:
    """The pool entry most similar to a candidate, when its ROUGE-L F1 exceeds the threshold."""

    index: int
    text: str
    key: Any
    score: float


class _IntBuffer:
    """A growable int32 array (a posting list): appends amortized O(1), reads as a numpy view."""

    __slots__ = ("data", "size")

    def __init__(self) -> None:
        self.data = np.empty(4, dtype=np.int32)
        self.size = 0

    def append(self, value: int) -> None:
        if self.size == len(self.data):
            grown = np.empty(2 * len(self.data), dtype=np.int32)
            grown[: self.size] = self.data
            self.data = grown
        self.data[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self.data[: self.size]


def rouge_l_f1(lcs: int, target_length: int, prediction_length: int) -> float:
    """ROUGE-L F1 from an LCS length, computed exactly as rouge-score computes it."""
    if target_length == 0 or prediction_length == 0:
        return 0.0
    precision = lcs / prediction_length
    recall = lcs / target_length
    return float(scoring.fmeasure(precision, recall))


def lcs_length(masks: dict[int, int], length: int, other: Sequence[int]) -> int:
    """Length of the longest common subsequence of a sequence and ``other``.

    ``masks[token]`` has bit i set where the sequence (of ``length`` tokens) holds ``token``.
    Bit-parallel algorithm (Allison & Dix 1986; Hyyro 2004): V starts all ones; for each token of
    ``other``, U = V & mask; V = (V + U) | (V - U). The LCS length is the number of zero bits.
    Python's integers are as wide as needed, so any length works.
    """
    full = (1 << length) - 1
    v = full
    for token in other:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return length - v.bit_count()


class RougePool:
    """A growing pool of texts and the question "is this new text too close to any of them?".

    >>> pool = RougePool(threshold=0.7)
    >>> pool.add("Give three tips for staying healthy.")
    0
    >>> pool.most_similar_above("Give three tips for staying very healthy.").score > 0.7
    True
    """

    def __init__(self, threshold: float = 0.7):
        self.threshold = threshold
        self._tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
        self._vocabulary: dict[str, int] = {}
        self.texts: list[str] = []
        self.keys: list[Any] = []
        self._token_ids: list[list[int]] = []
        self._lengths = _IntBuffer()
        # token id -> (entries holding it, how many times each holds it)
        self._postings: dict[int, tuple[_IntBuffer, _IntBuffer]] = {}
        self.exact_comparisons = 0  # LCS computations so far (for the benchmark and tests)

    def __len__(self) -> int:
        return len(self.texts)

    def tokenize(self, text: str) -> list[str]:
        """rouge-score's tokens for ``text`` (what its RougeScorer with use_stemmer=False sees)."""
        return list(self._tokenizer.tokenize(text))

    def _ids(self, tokens: Iterable[str], *, grow: bool) -> list[int]:
        vocabulary = self._vocabulary
        if grow:
            return [vocabulary.setdefault(token, len(vocabulary)) for token in tokens]
        # A token the pool has never seen matches nothing; -1 stands for all of them.
        return [vocabulary.get(token, -1) for token in tokens]

    def add(self, text: str, key: Any = None) -> int:
        """Put ``text`` in the pool (``key``: anything to find it by, e.g. a row id)."""
        index = len(self.texts)
        ids = self._ids(self.tokenize(text), grow=True)
        self.texts.append(text)
        self.keys.append(key)
        self._token_ids.append(ids)
        self._lengths.append(len(ids))
        for token, count in Counter(ids).items():
            posting = self._postings.get(token)
            if posting is None:
                posting = self._postings[token] = (_IntBuffer(), _IntBuffer())
            posting[0].append(index)
            posting[1].append(count)
        return index

    def most_similar_above(self, text: str) -> Match | None:
        """The most similar entry (lowest index among equals) when its ROUGE-L F1 with ``text``
        exceeds the threshold; ``None`` when no entry does (the plain loop keeps ``text``)."""
        ids = self._ids(self.tokenize(text), grow=False)
        length = len(ids)
        size = len(self.texts)
        if length == 0 or size == 0:
            return None  # rouge-score scores an empty token list 0 against anything
        overlap = np.zeros(size, dtype=np.int32)
        for token, count in Counter(ids).items():
            posting = self._postings.get(token)
            if posting is None:
                continue
            entries = posting[0].view()
            # Entries are unique within one posting list, so fancy-index += adds once each.
            if count == 1:
                overlap[entries] += 1
            else:
                overlap[entries] += np.minimum(posting[1].view(), count)
        lengths = self._lengths.view()
        bound = 2.0 * overlap / (length + lengths)
        (candidates,) = np.nonzero(bound > self.threshold - _MARGIN)
        if len(candidates) == 0:
            return None
        # Highest bound first, lowest index first among equal bounds.
        order = candidates[np.lexsort((candidates, -bound[candidates]))]
        masks: dict[int, int] = {}
        for position, token in enumerate(ids):
            if token >= 0:
                masks[token] = masks.get(token, 0) | (1 << position)
        best: Match | None = None
        for index in order.tolist():
            if best is not None and bound[index] < best.score - _MARGIN:
                break  # no later entry can reach (or tie) the best score found
            other = self._token_ids[index]
            self.exact_comparisons += 1
            # Candidate = the target, entry = the prediction: the reference's score(inst, entry).
            score = rouge_l_f1(lcs_length(masks, length, other), length, len(other))
            if score > self.threshold and (
                best is None or score > best.score or (score == best.score and index < best.index)
            ):
                best = Match(index, self.texts[index], self.keys[index], score)
        return best

    def add_if_novel(self, text: str, key: Any = None) -> Match | None:
        """Add ``text`` unless it is too similar to an entry; returns that entry, or ``None``."""
        match = self.most_similar_above(text)
        if match is None:
            self.add(text, key)
        return match


def plain_most_similar(
    text: str, pool: Sequence[str], threshold: float = 0.7, scorer: Any = None
) -> tuple[int, float] | None:
    """The reference code's check: score ``text`` against every entry with rouge-score; the
    first entry with the highest score when that score exceeds ``threshold``, else ``None``."""
    scorer = scorer or rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    best_index, best_score = -1, -1.0
    for index, entry in enumerate(pool):
        score = scorer.score(text, entry)["rougeL"].fmeasure
        if score > best_score:
            best_index, best_score = index, score
    if best_score > threshold:
        return best_index, best_score
    return None
