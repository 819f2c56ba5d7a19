"""Every example pipeline parses, starts with the command that runs it, and runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.workflow import Workflow, is_workflow_text

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_parses_and_says_how_to_run_it(path: Path) -> None:
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith(f"# stillroom run examples/{path.name} -o ")
    if is_workflow_text(path.read_text()):
        Workflow.from_file(path)  # every step's config checked
    else:
        Pipeline.from_file(path)


@pytest.mark.integration
def test_complete_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(Path(__file__).parents[2] / "examples" / "complete.yaml")
    pipeline.stages[0].max_tokens = 12  # keep the test short; the example itself uses 96
    result = pipeline.run(tmp_path / "out", progress=False, limit=2)
    assert result.counts == {"data": 2, "failed": 0, "dropped": 0}
    for row in OutputFolder(tmp_path / "out").read_rows("data"):
        assert len(row["completions"]) == 2 and len(row["logprobs"]) == 2
        assert all(len(t["top_logprobs"]) == 5 for t in row["logprobs"][0])
