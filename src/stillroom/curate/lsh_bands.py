"""LSH banding parameters for MinHash: the S-curve and the choice of bands and rows.

Step 4 of :mod:`stillroom.curate.minhash`: the signature is cut into ``bands`` bands of ``rows``
components, and a pair of Jaccard similarity ``s`` becomes a candidate with probability
``1 − (1 − s^rows)^bands`` (the S-curve, :func:`collision_probability`). :func:`lsh_parameters`
chooses ``bands`` and ``rows`` to minimize the weighted area under the S-curve below the
threshold (false positives) plus the area above it left out (false negatives): the criterion of
datasketch's ``MinHashLSH`` (Zhu et al.), computed here on our own. Its weights are equal without
verification; with verification a false positive costs only a check, so misses weigh 0.98 and
false positives 0.02 (see :data:`VERIFIED_FALSE_NEGATIVE_WEIGHT`).
"""

from __future__ import annotations

import functools

import numpy as np

# -- LSH parameters ----------------------------------------------------------------------------


def collision_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """The S-curve: probability that a pair of this Jaccard similarity shares a band."""
    s = np.asarray(similarity, dtype=np.float64)
    return 1.0 - (1.0 - s**rows) ** bands


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(64)


def _integrate(bands: np.ndarray, rows: np.ndarray, low: float, high: float, miss: bool) -> np.ndarray:
    """∫ S-curve (or 1 − S-curve when ``miss``) over [low, high], for many (bands, rows) at once.

    64-point Gauss-Legendre on 8 equal pieces: the integrands are polynomials of degree up to
    ``num_perm``, smooth on the interval; this agrees with adaptive quadrature to ~1e-12.
    """
    edges = np.linspace(low, high, 9)
    total = np.zeros(len(bands))
    for left, right in zip(edges[:-1], edges[1:], strict=True):
        half = (right - left) / 2
        s = left + half * (_GAUSS_NODES + 1)  # nodes mapped to [left, right]
        curve = 1.0 - (1.0 - s[None, :] ** rows[:, None]) ** bands[:, None]
        values = 1.0 - curve if miss else curve
        total += half * (values @ _GAUSS_WEIGHTS)
    return total


def false_positive_area(threshold: float, bands: int, rows: int) -> float:
    """∫₀ᵗ P(candidate | s) ds: how much of the S-curve lies below the threshold."""
    return float(_integrate(np.array([bands]), np.array([rows]), 0.0, threshold, miss=False)[0])


def false_negative_area(threshold: float, bands: int, rows: int) -> float:
    """∫ₜ¹ P(not a candidate | s) ds: how much similar-enough pairs the S-curve misses."""
    return float(_integrate(np.array([bands]), np.array([rows]), threshold, 1.0, miss=True)[0])


@functools.cache
def lsh_parameters(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands · rows <= num_perm`` minimizing the weighted sum of the
    false positive and false negative areas (see the module docstring).

    Every admissible pair is scored; ties go to the first in (bands, rows) order.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be at least 1, got {num_perm}")
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([b for b, _ in pairs], dtype=np.float64)
    rows = np.array([r for _, r in pairs], dtype=np.float64)
    error = false_positive_weight * _integrate(bands, rows, 0.0, threshold, miss=False)
    if threshold < 1.0:
        error += false_negative_weight * _integrate(bands, rows, threshold, 1.0, miss=True)
    best = int(np.argmin(error))
    return pairs[best]


# Weight of missed pairs against false candidates when choosing (bands, rows). Without
# verification every candidate is a drop, so both errors count alike (datasketch's default).
# With verification a false candidate costs one exact Jaccard (microseconds, vectorized) and a
# missed pair a duplicate left in the data, so misses weigh 49 times more. Measured with
# bench/minhash_dedup.py (20,000 documents, 128 permutations, threshold 0.8, seeds 0-4): equal
# weights give (9, 13) and find 81% of the true pairs; 0.9 gave (14, 9) and 97.4-98.8% of them;
# 0.95 gives (16, 8), 99.1-99.6%; 0.98 gives (17, 7), 99.6-99.9%, for 1.3x the candidates of
# (14, 9) and 119 permutations to compute instead of 126 (only the banded ones are when
# verifying): no more time.
UNVERIFIED_FALSE_NEGATIVE_WEIGHT = 0.5
VERIFIED_FALSE_NEGATIVE_WEIGHT = 0.98


def default_false_negative_weight(verify: bool) -> float:
    return VERIFIED_FALSE_NEGATIVE_WEIGHT if verify else UNVERIFIED_FALSE_NEGATIVE_WEIGHT
