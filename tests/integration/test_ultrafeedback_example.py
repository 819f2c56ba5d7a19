"""examples/ultrafeedback.yaml end to end on the embedded model (prompts -> completions -> judge ->
pairs), made short, and the pairwise and rubric judges on the same real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.feedback.pairwise import PairwiseJudge
from stillroom.feedback.rubric import RubricJudge
from stillroom.feedback.ultrafeedback import UltraFeedbackJudge
from stillroom.feedback.ultrafeedback_rubric import ASPECTS
from stillroom.generate.completions import Completions
from stillroom.llm.llamacpp import LlamaCppConfig

EXAMPLE = Path(__file__).parents[2] / "examples" / "ultrafeedback.yaml"


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_ultrafeedback_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(EXAMPLE)
    completions, judge, _ = pipeline.stages
    assert isinstance(completions, Completions) and isinstance(judge, UltraFeedbackJudge)
    completions.max_tokens = 16  # keep the test short; the example uses 96 tokens and 80 chars
    judge.rationale_chars = 40
    result = pipeline.run(tmp_path / "out", progress=False, limit=2, max_failure_rate=1.0)
    folder = OutputFolder(tmp_path / "out")
    data, dropped, failed = (folder.read_rows(kind) for kind in ("data", "dropped", "failed"))
    assert result.counts == {"data": len(data), "dropped": len(dropped), "failed": len(failed)}
    assert len(data) + len(dropped) + len(failed) == 2
    # The judge's answers are grammar-constrained, so none should fail to parse.
    assert not failed, failed[0]["error"] if failed else ""
    for row in data + dropped:
        assert len(row["ratings"]) == len(row["completions"]) == 4
        for rating in row["ratings"]:
            assert set(rating) == set(ASPECTS)
            assert all(value in {"1", "2", "3", "4", "5", "N/A"} for value in rating.values())
            assert rating["instruction_following"] != "N/A"
        assert all(isinstance(score, float) and 1 <= score <= 5 for score in row["scores"])
        assert all(kinds for kinds in row["hallucination_types"])
        entry = row["metadata"]["ultrafeedback_judge"]
        assert set(LINEAGE_KEYS) <= set(entry) and entry["model"] == "SmolLM2-135M-Instruct"
        assert all(sorted(order) == [0, 1, 2, 3] for order in entry["shown_order"].values())
    for row in data:
        scores = row["scores"]
        assert row["chosen"] == row["completions"][row["chosen_index"]]
        assert row["score_chosen"] == max(scores) > row["score_rejected"]
    for row in dropped:
        assert row["drop_reason"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_pairwise_and_rubric_judges_on_the_embedded_model(tmp_path: Path) -> None:
    rows = [{
        "id": "r1",
        "prompt": "What is the capital of France?",
        "completion": "The capital of France is Paris.",
        "baseline": "France is a country in Europe.",
        "reference": "Paris",
    }]
    backends = {"default": LlamaCppConfig()}
    pipeline = Pipeline(
        [
            PairwiseJudge(candidates=["completion", "baseline"], max_tokens=96, rationale_chars=40),
            RubricJudge(reference_column="reference", max_tokens=96, rationale_chars=40),
        ],
        input=rows,
        backends=backends,
    )
    result = pipeline.run(tmp_path / "out", progress=False, max_failure_rate=1.0)
    assert result.counts == {"data": 1, "failed": 0, "dropped": 0}
    [row] = OutputFolder(tmp_path / "out").read_rows("data")
    orders = row["pairwise"]["orders"]
    assert [o["shown_first"] for o in orders] == ["a", "b"]
    assert all(o["verdict"] in ("A", "B", "tie") for o in orders)
    expected = orders[0]["prefers"] if orders[0]["prefers"] == orders[1]["prefers"] else "tie"
    assert row["winner"] == expected
    assert isinstance(row["score"], int) and 1 <= row["score"] <= 10 and row["rationale"]
