"""examples/evol_instruct.yaml end to end on the embedded model, made short."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.generate.evol_instruct import (
    COPIES_EVOLVING_PROMPT,
    EMPTY_ANSWER,
    EMPTY_INSTRUCTION,
    NO_INFORMATION_GAIN,
    OPERATIONS,
    SORRY_SHORT_RESPONSE,
    STOPWORDS_ONLY_RESPONSE,
    TEMPLATES,
    EvolInstruct,
    copied_phrase,
    is_only_stopwords,
    is_sorry_and_short,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "evol_instruct.yaml"
REASONS = {COPIES_EVOLVING_PROMPT, EMPTY_ANSWER, EMPTY_INSTRUCTION, NO_INFORMATION_GAIN,
           SORRY_SHORT_RESPONSE, STOPWORDS_ONLY_RESPONSE}


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_evol_instruct_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    pipeline = Pipeline.from_file(EXAMPLE)
    stage = pipeline.stages[0]
    assert isinstance(stage, EvolInstruct)
    # keep the test short; the example itself uses 2 epochs and 64/96 tokens on 20 seeds
    stage.epochs = 2
    stage.max_tokens = 24
    stage.answer_max_tokens = 24
    stage.judge_max_tokens = 8
    result = pipeline.run(tmp_path / "out", progress=False, limit=2)
    folder = OutputFolder(tmp_path / "out")
    data, dropped, failed = (folder.read_rows(kind) for kind in ("data", "dropped", "failed"))

    # counts add up: per seed, its original plus one attempt per epoch, each kept or dropped
    assert failed == []
    assert len(data) + len(dropped) == 2 * (1 + stage.epochs)
    assert result.counts == {"data": len(data), "dropped": len(dropped), "failed": 0}
    assert data  # the originals at least (their answers are rarely empty)

    seeds = {row["id"] for row in data + dropped
             if row["metadata"]["evol_instruct"]["step"] == "seed"}
    assert len(seeds) == 2
    kept_ids = {row["id"] for row in data}
    for row in data + dropped:
        info = row["metadata"]["evol_instruct"]
        assert row["id"]
        assert info["method"] == "evol_instruct"
        assert info["seed_id"] in seeds
        if info["step"] == "seed":
            assert (info["parent_id"], info["depth"], info["path"], info["epoch"]) == (
                None, 0, [], 0)
            continue
        assert info["step"] in OPERATIONS
        assert info["epoch"] in (1, 2)
        assert info["parent_id"] in kept_ids | seeds  # a kept instruction (or a seed)
        assert 1 <= info["depth"] <= info["epoch"]
        assert len(info["path"]) == info["depth"] and info["path"][-1] == info["step"]
        assert info["template"] == TEMPLATES[info["step"]].version
        assert info["model"]

    for row in dropped:
        assert row["drop_reason"] in REASONS and row["stage"] == "evol_instruct"
        info = row["metadata"]["evol_instruct"]
        if info["step"] != "seed":
            assert info["elimination"]["rule"] == row["drop_reason"]

    # every kept evolution passed every rule, and nothing in data/ is empty
    for row in data:
        assert row["prompt"].strip() and row["completion"].strip()
        info = row["metadata"]["evol_instruct"]
        if info["step"] == "seed":
            continue
        assert copied_phrase(row["prompt"]) is None
        assert info["judge"]["verdict"] in ("not_equal", "unparsed")
        assert not is_sorry_and_short(row["completion"])
        assert not is_only_stopwords(row["completion"])
