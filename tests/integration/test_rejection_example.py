"""examples/rejection_sampling.yaml end to end on the embedded model, made short."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.verify.math import MathVerifier
from stillroom.verify.rejection import RejectionSample

EXAMPLE = Path(__file__).parents[2] / "examples" / "rejection_sampling.yaml"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_rejection_sampling_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(EXAMPLE)
    stage = pipeline.stages[0]
    assert isinstance(stage, RejectionSample)
    # keep the test short; the example itself uses 4 samples of 64 tokens on 20 prompts
    stage.max_samples = 2
    stage.max_tokens = 24
    result = pipeline.run(tmp_path / "out", progress=False, limit=2)
    folder = OutputFolder(tmp_path / "out")
    data, dropped = folder.read_rows("data"), folder.read_rows("dropped")
    assert result.counts["failed"] == 0
    assert len(data) + len(dropped) == 2 == result.counts["data"] + result.counts["dropped"]
    checker = MathVerifier()
    for row in data + dropped:
        entry = row["metadata"]["rejection_sample"]
        assert set(LINEAGE_KEYS) <= set(entry) and entry["method"] == "rejection_sampling"
        assert row["id"] and entry["verifier"] == "math"
        assert 1 <= row["samples_spent"] <= 2
        assert len(entry["samples"]) == row["samples_spent"]
        assert row["passed_count"] == sum(s["passed"] for s in entry["samples"])
    for row in data:
        assert 1 <= len(row["completions"]) <= stage.k
        assert row["completion"] == row["completions"][0]
        # A kept completion really passes the verifier, checked again here.
        assert checker.verify({**row, "completion": row["completion"]}).passed
    for row in dropped:
        assert row["samples_spent"] == 2 and row["passed_count"] == 0
        assert row["drop_reason"] == "no sample passed the verifier after 2 samples"
