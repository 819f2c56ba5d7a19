"""Small statistics for comparing models on the same items, with no SciPy.

* :func:`mcnemar_exact`: the exact McNemar test of paired right/wrong outcomes. Only the
  discordant items carry information: ``b`` (the first model right, the second wrong) and ``c``
  (the reverse). Under the null hypothesis that both models are equally accurate each discordant
  item is a fair coin, so ``b ~ Binomial(b + c, 1/2)`` and the two-sided p-value is
  ``min(1, 2 * P(X <= min(b, c)))`` (McNemar 1947; the exact, "binomial" form that statsmodels
  calls ``mcnemar(exact=True)``). ``b = 10, c = 2`` gives ``p = 2 * 79 / 4096 = 0.0386``.
* :func:`wilson_interval`: the Wilson score interval of one accuracy (Wilson 1927), which,
  unlike the normal approximation, stays inside [0, 1] and is sensible at 0/n and n/n.
* :func:`paired_bootstrap_interval`: a percentile bootstrap interval of the difference of two
  accuracies on the same items, resampling items (the pairing is kept).

SciPy is not a dependency of stillroom, so the binomial tail is summed here by hand.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

MCNEMAR_METHOD = "exact McNemar (two-sided binomial test on discordant pairs)"


def _log_binomial_pmf(k: int, n: int) -> float:
    """log P(X = k) for X ~ Binomial(n, 1/2)."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2.0)


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2).

    Summed in log space: with a few thousand discordant items ``0.5 ** n`` underflows to 0 and
    ``comb(n, k)`` overflows a float, so the plain product of the two is 0 * inf; log terms
    combined with log-sum-exp stay exact to float precision at any n.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [_log_binomial_pmf(i, n) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(value - top) for value in logs))


def mcnemar_exact(b: int, c: int) -> dict[str, Any]:
    """The exact two-sided McNemar test from the discordant counts ``b`` and ``c``.

    Returns ``{"b", "c", "p_value", "method"}``; with no discordant item the p-value is 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    p_value = 1.0 if n == 0 else min(1.0, 2.0 * binomial_cdf_half(min(b, c), n))
    return {"b": b, "c": c, "p_value": p_value, "method": MCNEMAR_METHOD}


def paired_counts(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int]:
    """``(b, c)``: items only ``first`` got right, and items only ``second`` got right."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes differ in length: {len(first)} and {len(second)}")
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return b, c


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``successes / n``; ``(0, 1)`` when ``n == 0``."""
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    z = _z(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # 0/n and n/n give exactly 0 and 1 in theory; floats leave ~1e-17 of rounding there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def paired_bootstrap_interval(
    first: Sequence[bool],
    second: Sequence[bool],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``accuracy(first) - accuracy(second)`` on shared items."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes differ in length: {len(first)} and {len(second)}")
    n = len(first)
    if n == 0:
        return 0.0, 0.0
    differences = [int(bool(x)) - int(bool(y)) for x, y in zip(first, second, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(differences, k=n)) / n for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    low = means[min(resamples - 1, int(math.floor(tail * resamples)))]
    high = means[min(resamples - 1, int(math.ceil((1.0 - tail) * resamples)) - 1)]
    return low, high


__all__ = [
    "MCNEMAR_METHOD",
    "binomial_cdf_half",
    "mcnemar_exact",
    "paired_bootstrap_interval",
    "paired_counts",
    "wilson_interval",
]
