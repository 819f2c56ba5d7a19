"""preference_pairs / binarize: strategies, ties, missing ratings, aspects, margins, formats."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from stillroom import Dropped, Pipeline, RowFailure
from stillroom.data.output import OutputFolder
from stillroom.feedback.pairs import PreferencePairs, binarize, score_of
from stillroom.pipeline.stage import StageContext, stages

TEXTS = ["a", "b", "c", "d"]
UF = ["helpfulness", "honesty", "instruction_following", "truthfulness"]


def run_stage(stage: PreferencePairs, row: dict[str, Any], seed: int = 0) -> list[Any]:
    result = asyncio.run(stage.process(row, StageContext("preference_pairs", seed)))
    assert isinstance(result, list)
    return result


def row(ratings: list[Any], **extra: Any) -> dict[str, Any]:
    texts = [f"t{i}" for i in range(len(ratings))]
    return {"id": "x1", "prompt": "p", "completions": texts, "ratings": ratings, **extra}


# -- scores ----------------------------------------------------------------------------------------


def test_score_of_numbers_dicts_and_na() -> None:
    assert score_of(4) == (4.0, None)
    assert score_of(np.int64(3)) == (3.0, None) and score_of(np.bool_(True))[0] is None
    assert score_of({"a": 4, "b": 5}) == (4.5, None)
    assert score_of({"a": 4, "b": "N/A"}) == (4.0, None)  # N/A left out of the mean
    assert score_of({"a": 4, "b": 2}, ["a"]) == (4.0, None)
    # UltraFeedback's text ratings ("4", " 5 ", "N/A") inside aspect dicts read as numbers.
    assert score_of({"a": "4", "b": " 5 ", "c": "N/A"}) == (4.5, None)
    assert score_of({"a": "nan"})[0] is None and score_of({"a": "four"})[0] is None
    for bad in (None, True, "4", float("nan"), {"a": "N/A"}, {"a": None}, {"a": "x"}):
        score, reason = score_of(bad)
        assert score is None and reason
    assert score_of({"a": 4}, ["a", "b"])[1] == "aspect 'b' is missing"


# -- strategies ------------------------------------------------------------------------------------


def test_random_lower_chooses_the_best_and_a_strictly_lower_one_reproducibly() -> None:
    ratings = [3, 5, 4, 3]
    seen = set()
    for seed in range(40):
        result = binarize(TEXTS, ratings, rng=random.Random(seed))
        (pair,) = result.pairs
        assert pair.chosen_index == 1 and pair.score_chosen == 5
        assert pair.score_rejected < 5
        again = binarize(TEXTS, ratings, rng=random.Random(seed)).pairs[0]
        assert again == pair
        seen.add(pair.rejected_index)
    assert seen == {0, 2, 3}  # it is random: every lower one gets picked


def test_random_lower_breaks_a_top_tie_at_random_never_picking_a_tied_one_as_rejected() -> None:
    chosen = set()
    for seed in range(40):
        (pair,) = binarize(TEXTS, [5, 5, 2, 5], rng=random.Random(seed)).pairs
        assert pair.rejected_index == 2
        chosen.add(pair.chosen_index)
    assert chosen == {0, 1, 3}  # not always the first teacher
    result = binarize(TEXTS, [5, 5, 2, 5], top_tie="drop")
    assert not result.pairs and "share the top score" in (result.drop_reason or "")


def test_best_worst_and_its_top_tie_rule() -> None:
    (pair,) = binarize(TEXTS, [3, 5, 1, 4], strategy="best_worst").pairs
    assert (pair.chosen_index, pair.rejected_index, pair.margin) == (1, 2, 4.0)
    tied = binarize(TEXTS, [5, 5, 1, 4], strategy="best_worst")
    assert not tied.pairs and tied.top_tie == 2
    assert "2 completions share the top score (5)" in (tied.drop_reason or "")
    (pair,) = binarize(TEXTS, [5, 5, 1, 4], strategy="best_worst", top_tie="random").pairs
    assert pair.chosen_index in (0, 1) and pair.rejected_index == 2
    # A tie at the bottom is harmless: either is equally worst.
    (pair,) = binarize(TEXTS, [1, 5, 1, 4], strategy="best_worst").pairs
    assert pair.chosen_index == 1 and pair.rejected_index in (0, 2)


def test_all_pairs_makes_every_strictly_ordered_pair_above_the_margin() -> None:
    result = binarize(TEXTS, [3, 5, 3, 1], strategy="all_pairs")
    got = {(p.chosen_index, p.rejected_index) for p in result.pairs}
    assert got == {(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)}  # (0, 2) is a tie: no pair
    result = binarize(TEXTS, [3, 5, 3, 1], strategy="all_pairs", min_margin=2)
    assert {(p.chosen_index, p.rejected_index) for p in result.pairs} == {
        (0, 3), (1, 0), (1, 2), (1, 3), (2, 3)
    }
    result = binarize(TEXTS, [3, 5, 3, 1], strategy="all_pairs", min_margin=3)
    assert {(p.chosen_index, p.rejected_index) for p in result.pairs} == {(1, 3)}


def test_min_margin() -> None:
    # random_lower picks only among completions at least min_margin below the best.
    for seed in range(20):
        (pair,) = binarize(TEXTS, [5, 4.5, 3, 4], min_margin=1, rng=random.Random(seed)).pairs
        assert pair.rejected_index in (2, 3)
    result = binarize(TEXTS, [5, 4.5, 4.8, 4.6], min_margin=1)
    assert not result.pairs and "min_margin 1 below the best" in (result.drop_reason or "")
    result = binarize(TEXTS, [5, 4.5, 4.8, 4.6], strategy="best_worst", min_margin=1)
    assert not result.pairs and "less than min_margin 1" in (result.drop_reason or "")
    assert binarize(TEXTS, [5, 4, 4.8, 4.6], strategy="best_worst", min_margin=1).pairs


def test_all_equal_and_too_few_are_dropped_with_reasons() -> None:
    for strategy in ("random_lower", "best_worst", "all_pairs"):
        result = binarize(TEXTS, [4, 4, 4, 4], strategy=strategy)  # type: ignore[arg-type]
        assert not result.pairs
        assert result.drop_reason == "all 4 rated completions have the same score (4)"
    result = binarize(TEXTS, [4, None, "bad", None])
    assert result.drop_reason == "fewer than 2 rated completions (1 of 4 have a usable rating)"


def test_missing_and_non_numeric_ratings_are_left_out_and_recorded() -> None:
    result = binarize(TEXTS, [None, 2, "5", 4], strategy="best_worst")
    (pair,) = result.pairs
    assert (pair.chosen_index, pair.rejected_index) == (3, 1)
    assert result.scores == [None, 2.0, None, 4.0]
    assert [e["index"] for e in result.excluded] == [0, 2]
    assert "missing" in result.excluded[0]["reason"]
    assert "not a number" in result.excluded[1]["reason"]
    # An empty completion text is left out too, whatever its rating.
    result = binarize(["", "b", "c"], [5, 2, 3], strategy="best_worst")
    assert result.pairs[0].chosen_index == 2 and result.excluded[0]["index"] == 0


def test_aspect_dicts_with_na_and_a_chosen_subset() -> None:
    ratings = [
        {"helpfulness": 5, "honesty": "N/A", "instruction_following": 5, "truthfulness": 5},
        {"helpfulness": 4, "honesty": 2, "instruction_following": 3, "truthfulness": 3},
        {"helpfulness": 2, "honesty": 5, "instruction_following": 2, "truthfulness": None},
    ]
    result = binarize(TEXTS[:3], ratings, strategy="best_worst")
    assert result.aspects == UF
    assert result.scores == [5.0, 3.0, None]  # N/A left out of the first; null fails the third
    assert result.excluded == [{"index": 2, "reason": "aspect 'truthfulness' is null"}]
    assert (result.pairs[0].chosen_index, result.pairs[0].rejected_index) == (0, 1)
    only = binarize(TEXTS[:3], ratings, strategy="best_worst", aspects=["honesty"])
    assert only.scores == [None, 2.0, 5.0]
    assert only.excluded[0]["reason"] == "every aspect is N/A"
    assert (only.pairs[0].chosen_index, only.pairs[0].rejected_index) == (2, 1)
    # A plain number among aspect dicts is not comparable with them.
    mixed = binarize(TEXTS[:3], [ratings[0], 4, ratings[1]], strategy="best_worst")
    assert mixed.scores == [5.0, None, 3.0]


def test_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 completions but 2 ratings"):
        binarize(TEXTS[:3], [1, 2])
    with pytest.raises(RowFailure, match="`completions` has 3 items but `ratings` has 2") as info:
        run_stage(PreferencePairs(), {"id": "x", "prompt": "p", "completions": TEXTS[:3],
                                      "ratings": [1, 2]})
    assert info.value.kind == "LengthMismatch"


# -- the stage -------------------------------------------------------------------------------------


def test_stage_output_columns_lineage_and_sources() -> None:
    sources = [{"model": f"m{i}"} for i in range(4)]
    (out,) = run_stage(
        PreferencePairs(strategy="best_worst"),
        row([3, 5, 1, None], completion_sources=sources,
            metadata={"completions": {"seed_id": "s"}}),
    )
    assert (out["prompt"], out["chosen"], out["rejected"]) == ("p", "t1", "t2")
    assert (out["score_chosen"], out["score_rejected"]) == (5.0, 1.0)
    assert (out["chosen_index"], out["rejected_index"]) == (1, 2)
    meta = out["metadata"]["preference_pairs"]
    assert meta["method"] == "preference_pairs" and meta["strategy"] == "best_worst"
    assert meta["margin"] == 4.0 and meta["parent_id"] == "x1" and meta["seed_id"] == "s"
    assert meta["chosen_source"] == {"model": "m1"} and meta["rejected_source"] == {"model": "m2"}
    assert meta["excluded"] == [{"index": 3, "reason": "rating is missing"}]
    assert "completions" in out["metadata"]  # earlier lineage kept


def test_stage_random_choice_depends_on_the_row_id_not_on_the_call() -> None:
    stage = PreferencePairs()
    picks = {run_stage(stage, row([5, 1, 2, 3]))[0]["rejected_index"] for _ in range(5)}
    assert len(picks) == 1
    ids = {run_stage(stage, row([5, 1, 2, 3], id=f"r{i}"))[0]["rejected_index"] for i in range(30)}
    assert ids == {1, 2, 3}


def test_messages_become_trl_conversational_format() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "old answer"},
    ]
    data = {"id": "m", "messages": messages, "completions": ["x", "y"], "ratings": [1, 2]}
    (out,) = run_stage(PreferencePairs(), data)
    assert out["prompt"] == messages[:2]
    assert out["chosen"] == [{"role": "assistant", "content": "y"}]
    assert out["rejected"] == [{"role": "assistant", "content": "x"}]
    # prompt_column: prompt takes the text even when messages are there.
    (out,) = run_stage(PreferencePairs(prompt_column="prompt"), {**data, "prompt": "p"})
    assert out["prompt"] == "p" and out["chosen"] == "y"


def test_a_conversational_prompt_gives_conversational_pairs() -> None:
    """TRL's conversational prompt (what `complete` takes besides text and `messages`): the
    pair is all conversational, never a list prompt with text answers."""
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    data = {"id": "c", "prompt": prompt, "completions": ["x", "y"], "ratings": [1, 2]}
    assert PreferencePairs().check_row(data) is None
    (out,) = run_stage(PreferencePairs(), data)
    assert out["prompt"] == prompt
    assert out["chosen"] == [{"role": "assistant", "content": "y"}]
    assert out["rejected"] == [{"role": "assistant", "content": "x"}]


def test_stage_drop_keeps_the_row_whole_with_lineage() -> None:
    original = row([4, 4, 4])
    (item,) = run_stage(PreferencePairs(), original)
    assert isinstance(item, Dropped)
    assert item.reason == "all 3 rated completions have the same score (4)"
    assert item.row["ratings"] == [4, 4, 4] and item.row["completions"] == original["completions"]
    assert item.row["metadata"]["preference_pairs"]["parent_id"] == "x1"
    assert "chosen" not in item.row


def test_check_row_names_missing_columns() -> None:
    stage = PreferencePairs()
    problem = stage.check_row({"id": "x", "prompt": "p", "completions": ["a"]})
    assert problem is not None and "ratings" in problem
    problem = PreferencePairs(ratings_column="scores").check_row(row([1, 2]))
    assert problem is not None and "scores" in problem
    assert stage.check_row({"completions": [], "ratings": []}) is not None  # no prompt
    assert stage.check_row(row([1, 2])) is None
    assert stage.check_row({**row([1]), "ratings": "5"}) == "`ratings` must be a list, got str"


def test_registered_and_validated() -> None:
    assert stages.get("preference_pairs") is PreferencePairs
    with pytest.raises(ValidationError):
        PreferencePairs(strategy="worst")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        PreferencePairs(min_margin=-1)
    with pytest.raises(ValidationError, match="top_tie"):
        PreferencePairs(strategy="all_pairs", top_tie="drop")


def test_pipeline_run_counts_add_up_and_writes_dpo_columns(tmp_path: Path) -> None:
    rows = [
        row([1, 5, 3], id="keep1"),
        row([{"h": 2, "t": "N/A"}, {"h": 5, "t": 4}], id="keep2"),
        row([4, 4], id="equal"),
        row([None, 3], id="toofew"),
        row([1, 2, 3], id="short", completions=["a", "b"]),
    ]
    result = Pipeline([PreferencePairs()], input=rows).run(tmp_path / "out", progress=False)
    folder = OutputFolder(tmp_path / "out")
    data = {r["id"]: r for r in folder.read_rows("data")}
    dropped = {r["id"]: r for r in folder.read_rows("dropped")}
    failed = {r["id"]: r for r in folder.read_rows("failed")}
    assert result.counts == {"data": 2, "dropped": 2, "failed": 1}
    assert sum(result.counts.values()) == len(rows)
    assert set(data) == {"keep1", "keep2"} and set(dropped) == {"equal", "toofew"}
    assert set(failed) == {"short"}
    for out in data.values():
        assert {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= set(out)
        assert out["score_chosen"] > out["score_rejected"]
        assert out["metadata"]["preference_pairs"]["method"] == "preference_pairs"
    assert data["keep1"]["chosen"] == "t1"
    assert (data["keep2"]["score_chosen"], data["keep2"]["score_rejected"]) == (4.5, 2.0)
    assert "fewer than 2" in dropped["toofew"]["drop_reason"]
    assert dropped["toofew"]["metadata"]["preference_pairs"]["parent_id"] == "toofew"
    assert "2 items but `ratings` has 3" in failed["short"]["error"]


def test_pipeline_all_pairs_gives_one_row_per_pair(tmp_path: Path) -> None:
    rows = [row([1, 2, 3], id="a"), row([2, 2], id="b")]
    result = Pipeline([PreferencePairs(strategy="all_pairs")], input=rows).run(
        tmp_path / "out", progress=False
    )
    data = OutputFolder(tmp_path / "out").read_rows("data")
    assert result.counts == {"data": 3, "dropped": 1, "failed": 0}
    assert len({r["id"] for r in data}) == 3
    assert {(r["chosen_index"], r["rejected_index"]) for r in data} == {(1, 0), (2, 0), (2, 1)}
    assert all(r["metadata"]["preference_pairs"]["parent_id"] == "a" for r in data)


def test_a_pipeline_file_names_the_stage() -> None:
    from stillroom.pipeline.config import parse_pipeline_text

    model, _ = parse_pipeline_text(
        "input: {rows: 2}\n"
        "stages:\n"
        "  - type: preference_pairs\n"
        "    strategy: best_worst\n"
        "    min_margin: 1\n"
        "    aspects: [helpfulness, honesty]\n"
    )
    (stage,) = model.stages  # type: ignore[attr-defined]
    assert isinstance(stage, PreferencePairs)
    assert (stage.strategy, stage.min_margin) == ("best_worst", 1)
    assert stage.aspects == ["helpfulness", "honesty"]
