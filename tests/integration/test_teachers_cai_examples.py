"""The multi-teacher and Constitutional AI examples end to end on the embedded model, shortened."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.generate.completions import Completions
from stillroom.generate.constitutional import Constitutional
from stillroom.generate.principles import PRINCIPLE_PROMPTS

EXAMPLES = Path(__file__).parents[2] / "examples"


def assert_lineage(row: dict, stage: str, method: str) -> None:
    entry = row["metadata"][stage]
    assert all(key in entry for key in LINEAGE_KEYS)
    assert entry["method"] == method and entry["parent_id"] == row["id"]


@pytest.mark.integration
def test_multi_teacher_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(EXAMPLES / "multi_teacher.yaml")
    stage = pipeline.stages[0]
    assert isinstance(stage, Completions)
    stage.max_tokens = 8  # keep the test short; the example itself uses 128
    result = pipeline.run(tmp_path / "out", progress=False, limit=2, max_failure_rate=1.0)
    folder = OutputFolder(tmp_path / "out")
    data, failed = folder.read_rows("data"), folder.read_rows("failed")
    assert result.counts["data"] + result.counts["failed"] == 2 and result.counts["dropped"] == 0
    assert len(data) == result.counts["data"] >= 1 and len(failed) == result.counts["failed"]
    for row in data:
        assert_lineage(row, "completions", "completions")
        texts, sources = row["completions"], row["completion_sources"]
        assert len(texts) == len(sources) == len(row["logprobs"]) == 4
        assert all(text.strip() for text in texts)
        models = [s["model"] for s in sources]
        assert models == ["smollm2-135m-t0.7"] * 2 + ["smollm2-135m-t1.0"] * 2
        for source, logprobs in zip(sources, row["logprobs"], strict=True):
            principle, index = source["system_prompt_id"].split("/")
            assert principle == source["principle"]
            assert int(index) < len(PRINCIPLE_PROMPTS[principle])
            assert logprobs and all(len(token["top_logprobs"]) == 5 for token in logprobs)


@pytest.mark.integration
def test_constitutional_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(EXAMPLES / "constitutional.yaml")
    stage = pipeline.stages[0]
    assert isinstance(stage, Constitutional)
    stage.rounds = 1  # keep the test short; the example itself uses 2 rounds of 96 tokens
    stage.max_tokens = 16
    result = pipeline.run(tmp_path / "out", progress=False, limit=2, max_failure_rate=1.0)
    folder = OutputFolder(tmp_path / "out")
    data = folder.read_rows("data")
    assert result.counts["data"] + result.counts["failed"] == 2 and result.counts["dropped"] == 0
    assert len(data) == result.counts["data"] >= 1
    principle_ids = {p.id for p in stage.constitution().principles}
    for row in data:
        assert_lineage(row, "constitutional", "constitutional")
        assert row["metadata"]["constitutional"]["rounds"] == 1
        [revision] = row["revisions"]
        assert revision["principle_id"] in principle_ids and revision["round"] == 1
        assert revision["critique"].strip() and revision["revision"].strip()
        assert row["completion"] == revision["revision"] and row["original"].strip()
        if row["metadata"]["constitutional"]["preference_pair"]:
            assert (row["chosen"], row["rejected"]) == (row["completion"], row["original"])
        else:
            assert row["chosen"] is None and row["rejected"] is None
    for row in folder.read_rows("failed"):
        assert row["error"] and row["stage"] == "constitutional"
