"""The pairwise and rubric judges on the embedded model. examples/ultrafeedback.yaml itself (prompts
-> completions -> judge -> pairs) runs through the CLI in tests/integration/test_examples.py, which
checks its ratings, lineage and pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.feedback.pairwise import PairwiseJudge
from stillroom.feedback.rubric import RubricJudge
from stillroom.llm.llamacpp import LlamaCppConfig


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
