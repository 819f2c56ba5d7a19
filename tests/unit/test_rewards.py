"""Verifiers as TRL reward functions (stillroom.verify.rewards), called the way TRL 1.16's
GRPOTrainer calls them: ``f(prompts=..., completions=..., completion_ids=..., **columns)`` with the
dataset's columns as lists aligned with the completions, plus its own keywords. Real verifiers
(exact, math, code in its sandbox): nothing is mocked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.verify.rewards import (
    RewardSpec,
    RowVerifierReward,
    ThinkTags,
    VerifierReward,
    build,
    completion_text,
)

EXACT = RewardSpec(verifier="exact", options={"reference_column": "answer"})


def call(reward: Any, completions: list[Any], prompts: list[Any] | None = None,
         **columns: Any) -> list[float]:
    """A call shaped as TRL's: prompts, completion ids and its own keywords besides the columns."""
    logged: dict[str, float] = {}
    rewards = reward(prompts=prompts or ["p"] * len(completions), completions=completions,
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
    prompts = ["p"] * 3 + ["<|Assistant|><think>\n"]
    assert call(reward, completions, prompts, answer=["12 + 30 = 42"] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert "never ended" in reward.verdicts[2].reason
    assert call.logged == {"rewards/exact/trace_unended": 0.25}  # type: ignore[attr-defined]


R1_PROMPT = "<|User|>What is 6*7?<|Assistant|><think>\n"  # the template opened the trace


def test_a_trace_the_template_opened_and_never_closed_earns_nothing() -> None:
    # Cut at max_completion_length mid-thought: no final answer, though a guess is in it.
    cut = "Let me try 6*7. Maybe \\boxed{42}? Wait, let me check again, 6*7 = 4"
    closed = "Let me try 6*7. Maybe \\boxed{42}?</think> I am not sure."
    right = "6*7 is 42.</think> \\boxed{42}"
    reward = build(RewardSpec(verifier="math"))
    assert call(reward, [cut, closed, right], [R1_PROMPT] * 3, answer=["42"] * 3) == [0.0, 0.0, 1.0]
    assert "never ended" in reward.verdicts[0].reason
    # The same completions after a prompt that did not open a trace are all answer.
    assert call(reward, [cut], ["<|User|>What is 6*7?<|Assistant|>"], answer=["42"]) == [1.0]
    # think_opened true / false decide for every prompt, whatever it ends with.
    reward.tags = ThinkTags(opened=True)
    assert call(reward, [cut], ["plain prompt"], answer=["42"]) == [0.0]
    reward.tags = ThinkTags(opened=False)
    # (false: the text is all answer, so the guess before `</think>` counts, as configured)
    assert call(reward, [closed], [R1_PROMPT], answer=["42"]) == [1.0]
    # Per-row verifiers take the same tags.
    rows = RowVerifierReward(ThinkTags())
    assert call(rows, [cut, right], [R1_PROMPT] * 2, answer=["42"] * 2, verifier=["math"] * 2,
                verifier_options=["{}"] * 2) == [0.0, 1.0]


@pytest.mark.parametrize("completion", [
    "<THINK>\\boxed{42}</THINK> I give up",
    "< think >\\boxed{42}</ think > no",
    "  <Think>\\boxed{42}< / think >no",
    "<think>\\boxed{42}</THINK >",
    "<think>x</think> <THINK>\\boxed{42}</THINK> no",  # a second trace after the first
    "<think>x</think><think>\\boxed{42}",             # ... that never ends
])
def test_other_spellings_of_the_tags_still_hide_the_trace(completion: str) -> None:
    reward = build(RewardSpec(verifier="math"))
    assert call(reward, [completion], answer=["42"]) == [0.0]


def test_other_spellings_of_the_tags_still_leave_the_answer() -> None:
    reward = build(RewardSpec(verifier="math"))
    texts = ["<THINK>hmm \\boxed{41}</THINK> \\boxed{42}", "< think >x</ think >\\boxed{42}",
             "a guess \\boxed{41}? </ THINK > \\boxed{42}"]
    prompts = ["p", "p", R1_PROMPT.replace("<think>", "<THINK> ")]
    assert call(reward, texts, prompts, answer=["42"] * 3) == [1.0, 1.0, 1.0]
    # Other tags, configured (think_start / think_end of train grpo).
    reward.tags = ThinkTags("<reasoning>", "</reasoning>")
    assert call(reward, ["< REASONING >\\boxed{42}</reasoning> no"], answer=["42"]) == [0.0]
    assert ThinkTags("[[", "]]").answer("[[x]] y") == ("y", "")


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


@pytest.mark.parametrize("column", ["completion", "reasoning", "messages", "prompt"])
def test_the_reference_may_not_be_the_answer_or_a_never_graded_column(column: str) -> None:
    # `completion` is where the policy's answer goes: it would be checked against itself.
    for verifier in ("exact", "math"):
        with pytest.raises(ConfigError) as caught:
            build(RewardSpec(verifier=verifier, options={"reference_column": column}))
        assert caught.value.key == "reference_column" and f"`{column}`" in caught.value.reason
    with pytest.raises(ConfigError, match=f"`{column}`"):
        RowVerifierReward().check_rows([{"verifier": "exact", "answer": "1", "completion": "1",
                                         "verifier_options": json.dumps(
                                             {"reference_column": column})}])
    with pytest.raises(ConfigError) as caught:
        build(RewardSpec(verifier="code", options={"tests_column": column}))
    assert caught.value.key == "tests_column"


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0])
def test_weights_are_finite_and_not_negative(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        RewardSpec(verifier="exact", weight=weight)
    assert RewardSpec(verifier="exact", weight=0).weight == 0
