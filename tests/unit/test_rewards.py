"""Verifiers as TRL reward functions (stillroom.verify.rewards), called the way TRL 1.16's
GRPOTrainer calls them: ``f(prompts=..., completions=..., completion_ids=..., **columns)`` with the
dataset's columns as lists aligned with the completions, plus its own keywords. Real verifiers
(exact, math, code in its sandbox): nothing is mocked."""

from __future__ import annotations

from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.verify.rewards import (
    RewardSpec,
    RowVerifierReward,
    VerifierReward,
    build,
    completion_text,
)

EXACT = RewardSpec(verifier="exact", options={"reference_column": "answer"})


def call(reward: Any, completions: list[Any], **columns: Any) -> list[float]:
    """A call shaped as TRL's: prompts, completion ids and its own keywords besides the columns."""
    logged: dict[str, float] = {}
    rewards = reward(prompts=["p"] * len(completions), completions=completions,
                     completion_ids=[[1]] * len(completions), trainer_state=object(),
                     log_extra=lambda *a: None, log_metric=logged.__setitem__, **columns)
    call.logged = logged  # type: ignore[attr-defined]
    return list(rewards)


def test_exact_reward_on_text_and_conversational_completions() -> None:
    reward = build(EXACT)
    answers = ["12 + 30 = 42", "12 + 30 = 42"]
    assert call(reward, ["12 + 30 = 42.", "It is 42."], answer=answers) == [1.0, 0.0]
    conversational = [[{"role": "assistant", "content": "12 + 30 = 42"}],
                      [{"role": "assistant", "content": "12 + 30 = 43"}]]
    assert call(reward, conversational, answer=answers) == [1.0, 0.0]
    assert reward.__name__ == "exact"
    assert "is not exactly" in reward.verdicts[1].reason


def test_the_trace_is_not_graded_and_an_unended_trace_earns_nothing() -> None:
    reward = build(EXACT)
    completions = [
        "<think>12 + 30 is 42</think>12 + 30 = 42",   # answer after the trace: graded
        "<think>12 + 30 = 42</think>I am not sure.",   # right equation only in the trace
        "<think>12 + 30 = 42",                         # never ends: no answer at all
        "the sum</think>12 + 30 = 42",                 # R1-style: the template opened it
    ]
    assert call(reward, completions, answer=["12 + 30 = 42"] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert "never ended" in reward.verdicts[2].reason
    assert call.logged == {"rewards/exact/trace_unended": 0.25}  # type: ignore[attr-defined]


def test_the_datasets_own_completion_and_reasoning_are_never_graded() -> None:
    # A teacher's right answer in the row must not stand in for the policy's wrong one.
    reward = build(EXACT)
    rewards = call(reward, ["no idea", ""], answer=["7 + 1 = 8"] * 2,
                   completion=["7 + 1 = 8"] * 2, reasoning=["7 + 1 = 8"] * 2,
                   messages=[[{"role": "assistant", "content": "7 + 1 = 8"}]] * 2)
    assert rewards == [0.0, 0.0]


def test_math_reward_reads_the_answer_column_it_is_told() -> None:
    reward = build(RewardSpec(verifier="math", options={"reference_column": "gold"}))
    assert call(reward, ["so the answer is \\boxed{1/2}", "#### 3"], gold=["0.5", "4"]) == [1.0, 0.0]


def test_code_reward_is_the_hardened_sandboxed_verdict() -> None:
    reward = build(RewardSpec(verifier="code", options={"cpu_seconds": 1, "wall_seconds": 5.0}))
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        # Reward hacks: leave before the asserts run, and an object equal to everything.
        "import os\nos._exit(0)\n",
        "class Any:\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return Any()\n",
    ]
    assert call(reward, completions, tests=[tests] * 3) == [1.0, 0.0, 0.0]


def test_check_rows_names_the_missing_column_and_the_row() -> None:
    reward = build(EXACT)
    reward.check_rows([{"id": "a", "answer": "1"}])
    with pytest.raises(ConfigError) as caught:
        reward.check_rows([{"id": "a", "answer": "1"}, {"id": "b", "prompt": "q"}], "data.jsonl")
    assert caught.value.key == "answer"
    assert "row 1 (id 'b')" in caught.value.reason and "`answer`" in caught.value.reason
    # A completion column in the data does not count as the policy's answer column being there.
    code = build(RewardSpec(verifier="code"))
    with pytest.raises(ConfigError) as caught:
        code.check_rows([{"completion": "x", "tests": "   "}])
    assert "empty" in caught.value.reason


def test_bad_specs_are_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown verifier 'maths'"):
        RewardSpec(verifier="maths")
    with pytest.raises(ConfigError, match="no option"):
        build(RewardSpec(verifier="exact", options={"referense_column": "answer"}))
    with pytest.raises(ConfigError, match="needs option"):
        build(RewardSpec(verifier="regex"))


def test_row_verifier_reward_reads_each_rows_verifier() -> None:
    reward = RowVerifierReward()
    rewards = call(
        reward, ["3 + 4 = 7", "the answer is 8", "yes"],
        verifier=["exact", "math", "regex"],
        verifier_options=['{"reference_column": "answer"}', "{}", '{"pattern": "yes|no"}'],
        answer=["3 + 4 = 7", "8", None],
    )
    assert rewards == [1.0, 1.0, 1.0]
    assert len(reward._built) == 3  # one verifier per distinct (name, options)
    call(reward, ["1"], verifier=["math"], verifier_options=["{}"], answer=["1"])
    assert len(reward._built) == 3
    with pytest.raises(ConfigError) as caught:
        reward.check_rows([{"verifier": "math", "verifier_options": "{}", "answer": "1"},
                           {"verifier": "math", "verifier_options": "{}"}])
    assert caught.value.key == "answer" and "row 1" in caught.value.reason
    with pytest.raises(ConfigError, match="not JSON"):
        reward.check_rows([{"verifier": "math", "verifier_options": "{oops"}])
    with pytest.raises(ConfigError, match="missing or empty"):
        reward.check_rows([{"answer": "1"}])


def test_completion_text_shapes() -> None:
    assert completion_text("a") == "a"
    assert completion_text([{"role": "assistant", "content": "b"}]) == "b"
    assert completion_text([]) == "" and completion_text(None) == ""
    assert isinstance(build(EXACT), VerifierReward)
