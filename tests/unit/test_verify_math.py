"""The math verifier: answers extracted from completions and compared with math-verify."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.verify import VerifierInputError, verifiers
from stillroom.verify.math import MathVerifier


def verdict(completion: Any, answer: Any, **options: Any) -> Any:
    return MathVerifier(**options).verify({"completion": completion, "answer": answer})


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (r"so the result is \boxed{31}.", "31"),  # boxed vs plain reference
        ("The answer is 31", r"\boxed{31}"),  # plain vs boxed reference
        ("The answer is 1/2.", "0.5"),  # fraction vs decimal
        (r"The answer is $\frac{1}{2}$", "0.5"),
        ("The answer is 0.5", r"\frac{1}{2}"),
        (r"the final answer is $\frac{\sqrt{2}}{2}$", r"\frac{1}{\sqrt{2}}"),  # equivalent exprs
        (r"The answer is $2x + 2$", "2(x+1)"),
        (r"\boxed{\{3, 2, 1\}}", r"\{1,2,3\}"),  # sets: order does not matter
        (r"The solution set is $[1, 2)$", "[1,2)"),  # intervals
        ("Total: 1,000 apples. The answer is 1000", "1,000"),
        ("48/2 = 24 in May.\n48+24 = 72 in all.\n#### 72", "72"),  # GSM8K marker
        ("So she sold 72.", "She sold 48/2 = 24 in May, 48+24 = 72 in all.\n#### 72"),  # GSM8K gold
    ],
)
def test_equivalent_answers_pass(completion: str, answer: str) -> None:
    result = verdict(completion, answer)
    assert result.passed, result.reason
    assert result.reward == 1.0
    assert "equivalent to" in result.reason


def test_the_right_hand_side_of_an_equation_is_the_answer_not_the_first_number() -> None:
    result = verdict("10 + 21 = 31", "31")
    assert result.passed and result.details["extracted"] == "31"
    wrong = verdict("10 + 21 = 31", "10")
    assert not wrong.passed and wrong.reason == "extracted 31, expected 10"


def test_a_wrong_answer_fails_naming_both_sides() -> None:
    result = verdict(r"17 + 15 = 31, so the answer is \boxed{31}.", "32")
    assert not result.passed and result.reward == 0.0
    assert result.reason == "extracted 31, expected 32"
    assert result.details == {"extracted": "31", "expected": "32", "gsm8k_marker": False}


def test_an_interval_is_not_its_closure_and_a_different_set_fails() -> None:
    assert not verdict(r"The answer is $[1, 2]$", "[1,2)").passed
    assert not verdict(r"\boxed{\{1, 2\}}", r"\{1,2,3\}").passed


def test_boxed_answer_wins_over_later_numbers() -> None:
    result = verdict(r"\boxed{7}. Check: 3 + 4 = 7, and 7 - 1 = 6", "7")
    assert result.passed, result.reason


def test_the_gsm8k_marker_wins_over_the_last_number_in_the_text() -> None:
    result = verdict("#### 72\nI double-checked it 3 times", "72")
    assert result.passed and result.details["gsm8k_marker"] is True
    wrong = verdict("Weng earns 12/60 = 0.2 per minute.\n#### 12", "10")
    assert not wrong.passed and wrong.reason == "extracted 12, expected 10"


def test_no_answer_in_the_completion_fails_with_that_reason() -> None:
    result = verdict("I am not sure how to compute that.", "42")
    assert not result.passed
    assert result.reason == "no answer found in the completion"
    assert result.details["extracted"] == ""


def test_numbers_as_values_are_read_as_text() -> None:
    assert verdict(31, 31).passed
    assert not verdict(30, "31").passed


def test_a_missing_answer_column_is_a_check_row_problem() -> None:
    verifier = MathVerifier()
    problem = verifier.check_row({"completion": "31"})
    assert problem is not None and "`answer`" in problem
    assert verifier.check_row({"completion": "31", "answer": "31"}) is None
    assert "`answer` is empty" in (verifier.check_row({"completion": "1", "answer": " "}) or "")
    assert "must be text" in (verifier.check_row({"completion": ["1"], "answer": "1"}) or "")
    with pytest.raises(VerifierInputError, match="`answer`"):
        verifier.verify({"completion": "31"})


def test_the_reference_and_answer_columns_can_be_renamed() -> None:
    verifier = MathVerifier(answer_column="response", reference_column="gold")
    assert verifier.check_row({"response": "4"}) is not None
    assert verifier.verify({"response": "2 + 2 = 4", "gold": "4"}).passed


def test_registered_as_math_and_bad_timeout_is_a_config_error() -> None:
    assert verifiers.get("math") is MathVerifier
    with pytest.raises(ConfigError, match="timeout_seconds"):
        MathVerifier(timeout_seconds=0)


def test_from_a_worker_thread_the_work_runs_in_a_process_with_the_same_verdicts() -> None:
    # math-verify's alarms work only in a main thread; off it, a worker process does the work.
    results: list[Any] = []

    def run() -> None:
        results.append(verdict("10 + 21 = 31", "31"))
        results.append(verdict(r"\boxed{31}", "32"))
        results.append(verdict("no idea", "32"))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert [r.passed for r in results] == [True, False, False]
    assert results[1].reason == "extracted 31, expected 32"
    assert results[2].reason == "no answer found in the completion"


def test_an_expensive_comparison_ends_as_a_failed_verdict() -> None:
    # 9^(9^9) cannot be evaluated in time; math-verify's timeout makes it a plain failure.
    result = verdict(r"\boxed{9^{9^{9}}}", "3", timeout_seconds=1)
    assert not result.passed
