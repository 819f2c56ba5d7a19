"""The echo filter (the README's example of adding a stage): shares, drops, row shapes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.curate.echo import EchoFilter, echo_share
from stillroom.data.output import OutputFolder
from stillroom.errors import InputError
from stillroom.pipeline.config import parse_pipeline_text


def test_the_share_counts_answer_ngrams_found_in_the_prompt() -> None:
    prompt = "What is the capital of France?"
    assert echo_share(prompt, "What is the capital of France?", 3) == 1.0
    assert echo_share(prompt, "Paris, a city on the Seine.", 3) == 0.0
    # "is the capital of france" gives 3 of the answer's 5 3-grams.
    assert echo_share(prompt, "It is the capital of France, Paris.", 3) == pytest.approx(3 / 5)
    assert echo_share(prompt, "Paris.", 3) is None  # too short to tell


def test_echoes_are_dropped_with_their_share_and_the_rest_kept(tmp_path: Path) -> None:
    rows = [
        {"id": "echo", "prompt": "Name a prime number above ten.",
         "completion": "Name a prime number above ten."},
        {"id": "answer", "prompt": "Name a prime number above ten.", "completion": "Eleven is prime."},
        {"id": "chat", "messages": [
            {"role": "user", "content": "Say something about the moon tonight."},
            {"role": "assistant", "content": "Say something about the moon tonight please."}]},
        {"id": "short", "prompt": "Add 2 and 2.", "completion": "4"},
    ]
    result = Pipeline([EchoFilter()], input=rows).run(tmp_path / "out", progress=False)
    folder = OutputFolder(tmp_path / "out")
    kept = {row["id"]: row for row in folder.read_rows("data")}
    dropped = {row["id"]: row for row in folder.read_rows("dropped")}
    assert set(kept) == {"answer", "short"} and set(dropped) == {"echo", "chat"}
    assert dropped["echo"]["drop_reason"] == "answer repeats the prompt (100% of its 3-grams)"
    assert dropped["chat"]["drop_reason"].startswith("answer repeats the prompt (")
    assert kept["answer"]["echo_share"] == 0.0 and kept["short"]["echo_share"] is None
    figures = result.summary["stage_results"]["echo_filter"]
    assert figures == {"rows": 3, "echoes_dropped": 2, "max_share": 0.6}
    assert EchoFilter().result_line(figures) == (
        "echo filter: 2 of 3 answers dropped as repeats of their prompt")


def test_a_row_without_an_answer_is_named_before_anything_runs(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "hi there friend", "completion": "hello"}\n{"prompt": "x"}\n')
    with pytest.raises(InputError, match=r"in\.jsonl:2.*no answer"):
        Pipeline([EchoFilter()], input=source).run(tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_it_is_named_in_pipeline_files_and_its_options_are_checked() -> None:
    model, _ = parse_pipeline_text(
        "input: x.jsonl\nstages:\n  - type: echo_filter\n    max_share: 0.8\n", "p.yaml")
    stage = model.stages[0]  # type: ignore[attr-defined]
    assert isinstance(stage, EchoFilter) and stage.max_share == 0.8
    with pytest.raises(ValidationError):
        EchoFilter(max_share=0)
