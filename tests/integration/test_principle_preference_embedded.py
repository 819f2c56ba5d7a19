"""`principle_preference` on the embedded model: raw prompts, soft labels from real logprobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.feedback.principle_preference import PrinciplePreference
from stillroom.llm.llamacpp import LlamaCppConfig

ROWS = [
    {"id": "egg", "prompt": "How do I boil an egg?",
     "completions": ["Put the egg in boiling water for nine minutes, then cool it in cold water.",
                     "Eggs are stupid. Figure it out yourself."]},
    {"id": "paris", "prompt": "What is the capital of France?",
     "completions": ["I will not tell you.", "The capital of France is Paris."]},
]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_soft_labels_from_the_embedded_model_in_both_orders(tmp_path: Path) -> None:
    stage = PrinciplePreference()  # mode auto: llama.cpp takes raw prompts and returns logprobs
    # A small context keeps the all-positions logits buffer small (n_ctx x vocabulary floats).
    pipeline = Pipeline([stage], input=ROWS, backends={"default": LlamaCppConfig(n_ctx=512)})
    result = pipeline.run(tmp_path / "out", progress=False, max_failure_rate=1.0)
    folder = OutputFolder(tmp_path / "out")
    data, dropped = folder.read_rows("data"), folder.read_rows("dropped")
    assert result.counts["failed"] == 0, folder.read_rows("failed")
    assert len(data) + len(dropped) == 2
    principle_ids = {p.id for p in stage.principle_set().principles}
    by_id = {row["id"]: row for row in ROWS}
    for row in data + dropped:
        preference = row["preference"]
        assert preference["mode"] == "logprobs" and preference["principle_id"] in principle_ids
        orders = preference["orders"]
        assert [o["shown"] for o in orders] == [["first", "second"], ["second", "first"]]
        for order in orders:
            assert order["label_source"] == "raw_prompt_logprobs"
            assert 0 < order["p_a"] < 1 and order["p_a"] + order["p_b"] == pytest.approx(1)
        p_first = (orders[0]["p_a"] + orders[1]["p_b"]) / 2
        assert preference["p_first"] == pytest.approx(p_first) and 0 < p_first < 1
        entry = row["metadata"]["principle_preference"]
        assert set(LINEAGE_KEYS) <= set(entry) and entry["model"] == "SmolLM2-135M-Instruct"
    for row in data:
        candidates = by_id[row["id"]]["completions"]
        assert sorted([row["chosen"], row["rejected"]]) == sorted(candidates)
        first_wins = row["preference"]["p_first"] > 0.5
        assert row["chosen"] == candidates[0 if first_wins else 1]
        assert 0.5 < row["p_chosen"] < 1
        assert "score_chosen" not in row  # a probability is not written where ratings go
