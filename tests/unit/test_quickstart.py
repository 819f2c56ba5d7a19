"""The quickstart's task and its checks (the whole loop runs in tests/integration/test_cli.py)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.quickstart import QuickstartSettings, quickstart, to_training_row
from stillroom.quickstart_task import SEED_TASK, draw_pairs, instance, split_prompts
from stillroom.verify.formats import ExactVerifier


def test_an_instance_has_its_reference_and_the_teachers_worked_examples() -> None:
    row = instance(SEED_TASK, 40, 85)
    assert row["prompt"] == "What is 40 + 85? Reply with just the equation and its result."
    assert row["answer"] == "40 + 85 = 125" and row["question"] == "What is 40 + 85?"
    messages = row["teacher_messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    assert messages[1]["content"] == "12 + 30 = 42" and messages[-1]["content"] == row["prompt"]
    # The reference passes the strict checker the data is filtered with.
    assert ExactVerifier().verify({"completion": row["answer"] + ".", "answer": row["answer"]}).passed


def test_held_out_prompts_never_enter_training() -> None:
    train, held = split_prompts(SEED_TASK, 300, 100, rng_seed=5)
    assert len(train) == 300 and len(held) == 100
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert len({r["prompt"] for r in train}) == 300
    examples = {SEED_TASK["template"].format(a=a, b=b) for a, b in SEED_TASK["examples"]}
    assert not examples & {r["prompt"] for r in train + held}
    # The same seed draws the same split (a rerun resumes the same run).
    again, _ = split_prompts(SEED_TASK, 300, 100, rng_seed=5)
    assert [r["id"] for r in again] == [r["id"] for r in train]


def test_drawing_more_pairs_than_exist_is_refused() -> None:
    small = dict(SEED_TASK, low=1, high=2, examples=[])
    assert len(draw_pairs(small, 4, random.Random(0), set())) == 4
    with pytest.raises(ValueError, match="cannot draw 5"):
        draw_pairs(small, 5, random.Random(0), set())


def test_the_student_sees_the_bare_prompt_not_the_examples() -> None:
    row = {**instance(SEED_TASK, 11, 22), "completion": "11 + 22 = 33", "logprobs": [],
           "messages": [{"role": "user", "content": "x"}], "samples_spent": 2}
    kept = to_training_row(row)
    assert set(kept) == {"id", "seed_id", "question", "prompt", "answer", "completion", "logprobs",
                         "samples_spent"}


def test_without_the_train_extra_it_stops_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "trl" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match=r"needs trl: pip install -e '.\[train\]'"):
        quickstart(tmp_path / "out", settings=QuickstartSettings(train_prompts=2, heldout=2))
    assert not (tmp_path / "out").exists()
