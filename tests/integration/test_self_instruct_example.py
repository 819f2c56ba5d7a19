"""examples/self_instruct.yaml end to end on the embedded model, shortened."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.generate.rouge_pool import plain_most_similar
from stillroom.generate.self_instruct import SelfInstruct

EXAMPLE = Path(__file__).parents[2] / "examples" / "self_instruct.yaml"


@pytest.mark.integration
def test_self_instruct_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(EXAMPLE)
    bootstrap, instances = pipeline.stages
    assert bootstrap.type == "self_instruct" and instances.type == "self_instruct_instances"
    # Shortened so the test takes well under a minute; the example itself asks for more.
    bootstrap.num_instructions = 3
    bootstrap.requests_per_round = 2
    bootstrap.max_rounds = 2
    bootstrap.max_tokens = 64
    instances.max_tokens = 48
    instances.classification_examples = 6
    instances.output_first_examples = 3
    instances.input_first_examples = 3
    out = tmp_path / "out"
    result = pipeline.run(out, progress=False, max_failure_rate=1.0)
    folder = OutputFolder(out)
    data, dropped, failed = (folder.read_rows(kind) for kind in ("data", "dropped", "failed"))
    assert result.counts == {"data": len(data), "dropped": len(dropped), "failed": len(failed)}

    for row in data + dropped:
        stage = row.get("stage", "self_instruct_instances")
        entry = row["metadata"][stage]
        assert set(LINEAGE_KEYS) <= set(entry) and entry["method"] == "self_instruct"
        assert entry["model"] == "SmolLM2-135M-Instruct"
        assert row["id"]
    assert len({row["id"] for row in data + dropped}) == len(data) + len(dropped)

    # Stage 1: the kept instructions (what instance rows and dropped tasks point back to) obey
    # every rule; every request is accounted for (kept candidates, dropped ones, failures).
    first = [r for r in dropped if r["stage"] == "self_instruct"]
    failed_requests = [r for r in failed if r["stage"] == "self_instruct"]
    requests = {
        (r["metadata"]["self_instruct"]["round"], r["metadata"]["self_instruct"]["request_index"])
        for r in first + failed_requests + data
    }
    assert len(requests) <= 2 * 2
    kept = {r["instruction"] for r in data}
    kept |= {r["instruction"] for r in dropped if r["stage"] == "self_instruct_instances"}
    assert len(kept) <= 3
    stage = SelfInstruct()
    seeds = [row["instruction"] for row in _seed_rows()]
    for text in kept:
        assert stage.filter(text) is None  # length, blacklist, prefix, first character
        assert plain_most_similar(text, seeds) is None  # ROUGE-L <= 0.7 with every seed
    for row in first:
        assert row["drop_reason"]

    # Stage 2: each kept instruction has instance rows or a dropped-task row, never both empty.
    parents = {r["metadata"]["self_instruct_instances"]["parent_id"] for r in data}
    dropped_tasks = {
        r["metadata"]["self_instruct_instances"]["parent_id"]
        for r in dropped
        if r["stage"] == "self_instruct_instances" and r["drop_reason"].startswith("task:")
    }
    assert not parents & dropped_tasks
    stages = result.summary["stages"]
    assert stages["self_instruct"]["rows_out"] == stages["self_instruct_instances"]["rows_in"]
    assert len(parents | dropped_tasks) == stages["self_instruct"]["rows_out"] == len(kept)
    for row in data:
        assert row["output"] and row["output"] != row["input"]
        assert not row["output"].endswith(":") and not row["input"].endswith(":")
        assert row["completion"] == row["output"]
        assert row["prompt"].startswith(row["instruction"])
        assert isinstance(row["is_classification"], bool)
        entry = row["metadata"]["self_instruct_instances"]
        assert entry["generation"] == (
            "output_first" if row["is_classification"] else "input_first"
        )
    per_task: dict[str, int] = {}
    for row in data:
        per_task[row["instruction"]] = per_task.get(row["instruction"], 0) + 1
    assert all(count <= 5 for count in per_task.values())


def _seed_rows() -> list[dict[str, str]]:
    from stillroom.data.readers import iter_rows, resolve_input_path

    return [row for _, row in iter_rows(resolve_input_path("builtin:self_instruct_seed_tasks"))]
