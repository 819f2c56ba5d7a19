"""Semantic dedup's neighbour search on vectors made for the purpose (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stillroom.curate import semantic
from stillroom.curate.dedup import Dedup


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def clustered(count: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Random unit vectors, every fifth one a slightly moved copy of the one before it."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, 48))
    for index in range(1, count, 5):
        vectors[index] = vectors[index - 1] + rng.normal(scale=0.05, size=48)
    return unit(vectors), {(index - 1, index) for index in range(1, count, 5)}


def test_exact_search_finds_every_pair_above_the_threshold() -> None:
    vectors, planted = clustered(400)
    pairs, similarity = semantic.similar_pairs(vectors, 0.95)
    assert {(int(a), int(b)) for a, b in pairs} == planted
    assert (similarity >= 0.95).all()
    brute = vectors @ vectors.T
    assert similarity == pytest.approx([brute[a, b] for a, b in pairs], abs=1e-5)


def test_approximate_search_agrees_on_a_larger_set(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("usearch")
    vectors, planted = clustered(3000, seed=1)
    monkeypatch.setattr(semantic, "EXACT_SEARCH_MAX_ROWS", 100)  # force the HNSW index
    pairs, similarity = semantic.similar_pairs(vectors, 0.95)
    found = {(int(a), int(b)) for a, b in pairs}
    assert found <= planted and len(found) >= 0.98 * len(planted)
    assert similarity == pytest.approx(semantic.cosine(vectors, pairs))


def test_exact_copies_count_despite_float_rounding() -> None:
    vectors = unit(np.random.default_rng(2).normal(size=(3, 384)))
    vectors = np.concatenate([vectors, vectors[:1]])
    pairs, _ = semantic.similar_pairs(vectors, 1.0)
    assert pairs.tolist() == [[0, 3]]


def test_a_model_path_that_is_not_there_fails_at_config_time(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a folder"):
        Dedup(method="semantic", model=str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="`model` applies to method semantic"):
        Dedup(method="minhash", model="x")
    assert semantic.model_label(None) == semantic.EMBEDDING_MODEL
