"""The algorithms of ``select``'s diversity step, on arrays alone (no rows, no options).

* :func:`round_robin`: the first ``size`` rows of a round-robin over groups (domains or
  clusters), each group's most preferred rows first;
* :func:`kmeans`: k-means with k-means++ seeding, which makes the groups when the rows have no
  domain labels;
* :func:`kcenter`: greedy farthest-point k-center, which picks rows spread over the whole set.

The ``select`` stage (:mod:`stillroom.curate.select`) runs them on sentence embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Lloyd iterations at most; on sentence embeddings k-means settles (no row changes cluster) well
# before this, and a cluster's members matter here only as a group to take turns from.
KMEANS_ITERATIONS = 30
# Rows whose distances to every center are computed at once in k-means (rows x clusters floats).
_KMEANS_BLOCK = 8192


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
