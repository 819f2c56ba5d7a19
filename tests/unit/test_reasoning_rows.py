"""Reasoning traces in rows: the `reasoning` column, cut traces, verifiers and judges reading the
final answer, reasoning tokens in the card and report. Scripted backends (see tests/fakes.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.evaluate.metrics import verify_outputs
from stillroom.feedback.judging import NO_FINAL_ANSWER, judged_text
from stillroom.feedback.pairwise import PairwiseJudge
from stillroom.feedback.ultrafeedback import UltraFeedbackJudge
from stillroom.generate.completions import Completions, Teacher
from stillroom.llm.reasoning import TRUNCATED_REASONING
from stillroom.llm.types import Completion, Request
from stillroom.report.card import render_card
from stillroom.report.html import render_report
from stillroom.stages.complete import Complete
from stillroom.verify.base import verifiers
from stillroom.verify.rejection import MajorityVote, RejectionSample
from stillroom.verify.stage import Verify
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

CUT = "CUT:"  # a script's answer starting so was cut at max_tokens while thinking


class TraceBackend(ScriptedBackend):
    """Returns the trace apart from the answer, as a server with a reasoning parser does: the
    script's ``trace</think>answer`` is split there; ``CUT:trace`` is a trace cut at max_tokens
    (no answer, finish_reason length); any other text is an answer without a trace."""

    async def generate(self, request: Request) -> Completion:
        completion = await super().generate(request)
        text = completion.text
        if text.startswith(CUT):
            trace = text[len(CUT):]
            completion.text, completion.finish_reason = "", "length"
            completion.reasoning, completion.reasoning_ended = trace, False
        elif "</think>" in text:
            trace, _, completion.text = text.partition("</think>")
            completion.reasoning = trace
        else:
            return completion
        completion.reasoning_tokens = len(completion.reasoning.split())
        return completion


@pytest.fixture(autouse=True)
def fresh() -> None:
    fakes.CURRENT.clear()


def use(script: Any, cls: type[ScriptedBackend] = TraceBackend) -> ScriptedBackend:
    backend = cls(script)
    fakes.CURRENT["default"] = backend
    return backend


def by_sample(texts: list[str]) -> Any:
    return lambda request, attempt: texts[request.sample]


def run(stages: list[Any], rows: list[dict[str, Any]], out: Path) -> OutputFolder:
    pipeline = Pipeline(stages, input=rows, backends={"default": ScriptedConfig(max_retries=0)})
    pipeline.run(out, progress=False, max_failure_rate=1.0)
    return OutputFolder(out)


ROW = {"id": "q1", "prompt": "what is 3 + 4?", "answer": "7"}


# -- complete ---------------------------------------------------------------------------------------


def test_the_trace_goes_in_reasoning_beside_the_answer(tmp_path: Path) -> None:
    use(lambda request, attempt: "three and four make seven</think>The answer is 7.")
    folder = run([Complete()], [ROW], tmp_path / "out")
    [row] = folder.read_rows("data")
    assert row["completion"] == "The answer is 7."
    assert row["reasoning"] == "three and four make seven"
    assert row["metadata"]["complete"]["reasoning_tokens"] == 5
    assert "reasoning_truncated" not in row  # only with truncated_reasoning: flag


def test_rows_of_a_model_without_traces_are_unchanged(tmp_path: Path) -> None:
    use(lambda request, attempt: "The answer is 7.")
    [row] = run([Complete()], [ROW], tmp_path / "out").read_rows("data")
    assert "reasoning" not in row
    assert "reasoning_tokens" not in row["metadata"]["complete"]


def test_n_samples_get_traces_aligned_with_the_completions(tmp_path: Path) -> None:
    use(by_sample(["first thought</think>7", "no trace here", "third thought</think>seven"]))
    [row] = run([Complete(n=3)], [ROW], tmp_path / "out").read_rows("data")
    assert row["completions"] == ["7", "no trace here", "seven"]
    assert row["reasoning"] == ["first thought", None, "third thought"]
    assert row["metadata"]["complete"]["reasoning_tokens"] == 4


def test_a_custom_output_column_gets_its_own_trace_column(tmp_path: Path) -> None:
    use(lambda request, attempt: "thinking</think>7")
    [row] = run([Complete(output_column="draft")], [ROW], tmp_path / "out").read_rows("data")
    assert row["draft"] == "7" and row["draft_reasoning"] == "thinking"
    assert "reasoning" not in row


def test_a_trace_cut_at_max_tokens_fails_the_row_by_default(tmp_path: Path) -> None:
    use(by_sample(["done</think>7", "CUT:still thinking about"]))
    folder = run([Complete(n=2)], [ROW], tmp_path / "out")
    assert folder.read_rows("data") == []
    [failed] = folder.read_rows("failed")
    assert failed["error_type"] == TRUNCATED_REASONING
    assert "sample 1" in failed["error"] and "finish_reason length" in failed["error"]


def test_a_cut_trace_is_kept_flagged_with_no_answer_when_asked(tmp_path: Path) -> None:
    use(by_sample(["CUT:still thinking about", "done</think>7"]))
    folder = run([Complete(n=2, truncated_reasoning="flag")], [ROW], tmp_path / "out")
    [row] = folder.read_rows("data")
    assert row["completions"] == ["", "7"]
    assert row["reasoning"] == ["still thinking about", "done"]
    assert row["reasoning_truncated"] == [True, False]


def test_one_flagged_cut_trace_in_the_rows_shape(tmp_path: Path) -> None:
    use(lambda request, attempt: "CUT:half a thought")
    stage = Complete(truncated_reasoning="flag")
    [row] = run([stage], [ROW], tmp_path / "out").read_rows("data")
    assert row["completion"] == "" and row["reasoning"] == "half a thought"
    assert row["reasoning_truncated"] is True


# -- completions (several teachers) -----------------------------------------------------------------


def test_completions_keep_each_teachers_trace(tmp_path: Path) -> None:
    use(by_sample(["a thought</think>answer one", "answer two"]))
    stage = Completions(teachers=[Teacher(n=2)], principles=None)
    [row] = run([stage], [ROW], tmp_path / "out").read_rows("data")
    assert row["completions"] == ["answer one", "answer two"]
    assert row["reasoning"] == ["a thought", None]
    assert row["metadata"]["completions"]["reasoning_tokens"] == 2


def test_a_cut_trace_is_a_failed_sample_in_completions(tmp_path: Path) -> None:
    use(by_sample(["a thought</think>answer one", "CUT:half"]))
    stage = Completions(teachers=[Teacher(n=2)], principles=None)
    [failed] = run([stage], [ROW], tmp_path / "all").read_rows("failed")
    assert failed["error_type"] == TRUNCATED_REASONING
    assert "sample 1" in failed["error"]

    stage = Completions(teachers=[Teacher(n=2)], principles=None, min_completions=1)
    [row] = run([stage], [ROW], tmp_path / "some").read_rows("data")
    assert row["completions"] == ["answer one"] and row["reasoning"] == ["a thought"]
    [missing] = row["metadata"]["completions"]["failed_samples"]
    assert missing["sample"] == 1 and missing["error_type"] == TRUNCATED_REASONING


# -- verifiers read the final answer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "row", "passed"),
    [
        ("math", {}, {"completion": "<think>maybe \\boxed{5}</think> so \\boxed{7}"}, True),
        ("math", {}, {"completion": "<think>surely \\boxed{7}</think> \\boxed{5}"}, False),
        ("math", {}, {"completion": "R1 style, opened by the template: 7</think>\\boxed{7}"},
         True),
        ("exact", {}, {"completion": "<think>hmm, 3 + 4</think>\n7"}, True),
        ("regex", {"pattern": "[0-9]+"}, {"completion": "<think>let me see</think> 7"}, True),
        ("length", {"max": 3}, {"completion": "<think>" + "word " * 50 + "</think>7"}, True),
        # A trace the backend returned apart is not the answer, whatever it says.
        ("math", {}, {"completion": "\\boxed{5}", "reasoning": "it is \\boxed{7}"}, False),
        ("exact", {}, {"completion": "7", "reasoning": "not 5"}, True),
    ],
)
def test_verifiers_grade_the_answer_not_the_trace(
    kind: str, options: dict[str, Any], row: dict[str, Any], passed: bool
) -> None:
    verdict = verifiers.get(kind)(**options).verify({"answer": "7", **row})
    assert verdict.passed is passed, verdict.reason


@pytest.mark.parametrize("kind", ["math", "exact", "regex"])
def test_a_trace_that_never_ended_is_a_failed_verdict_with_its_reason(kind: str) -> None:
    options = {"pattern": ".*"} if kind == "regex" else {}
    row = {"answer": "7", "completion": "<think>so the answer is \\boxed{7}"}
    verdict = verifiers.get(kind)(**options).verify(row)
    assert not verdict.passed
    assert "never ended" in verdict.reason
    assert verdict.details == {"reasoning_ended": False}


def test_the_code_verifier_runs_the_answers_code_not_the_traces() -> None:
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    verifier = verifiers.get("code")()
    row = {"tests": "assert add(2, 3) == 5", "completion": f"<think>{wrong}</think>\n{right}"}
    assert verifier.verify(row).passed
    row["completion"] = f"<think>{right}</think>\n{wrong}"
    assert not verifier.verify(row).passed


def test_evaluation_grades_outputs_with_traces_the_same_way() -> None:
    verifier = verifiers.get("math")()
    verdicts = verify_outputs(verifier, [{"answer": "7"}] * 3,
                              ["<think>5?</think>7", "<think>7?</think>5", "<think>7"])
    assert [v["passed"] for v in verdicts] == [True, False, False]
    assert "never ended" in verdicts[2]["reason"]


def test_verify_stage_over_rows_with_inline_traces(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "prompt": "3+4", "answer": "7", "completion": "<think>\\boxed{5}</think>7"},
        {"id": "b", "prompt": "3+4", "answer": "7", "completion": "<think>\\boxed{7}</think>5"},
        {"id": "c", "prompt": "3+4", "answer": "7", "completion": "<think>\\boxed{7} and then"},
        {"id": "d", "prompt": "3+4", "answer": "7", "completion": "7", "reasoning": "5"},
    ]
    folder = run([Verify(kind="math")], rows, tmp_path / "out")
    verdicts = {row["id"]: row for row in folder.read_rows("data")}
    assert {key: row["passed"] for key, row in verdicts.items()} == {
        "a": True, "b": False, "c": False, "d": True}
    assert "never ended" in verdicts["c"]["reason"]
    # The row keeps what the model wrote; only the check reads the answer part.
    assert verdicts["a"]["completion"] == "<think>\\boxed{5}</think>7"


# -- rejection sampling and voting ------------------------------------------------------------------


def test_rejection_sampling_keeps_traces_and_never_passes_a_cut_one(tmp_path: Path) -> None:
    use(by_sample(["CUT:\\boxed{7}", "thought a</think>\\boxed{5}", "thought b</think>\\boxed{7}"]))
    stage = RejectionSample(k=1, max_samples=3, batch=3)
    [row] = run([stage], [ROW], tmp_path / "out").read_rows("data")
    assert row["completion"] == "\\boxed{7}" and row["reasoning"] == "thought b"
    assert row["completions_reasoning"] == ["thought b"]
    samples = row["metadata"]["rejection_sample"]["samples"]
    assert [s["passed"] for s in samples] == [False, False, True]
    assert "never ended" in samples[0]["reason"]
    assert row["metadata"]["rejection_sample"]["reasoning_tokens"] == 1 + 2 + 2


def test_majority_vote_reads_answers_after_inline_traces(tmp_path: Path) -> None:
    row = {"id": "v", "prompt": "?", "completions": [
        "<think>\\boxed{3}</think>\\boxed{5}", "<think>\\boxed{3}</think>\\boxed{5}",
        "\\boxed{3}", "<think>\\boxed{3} \\boxed{3}"]}
    [out] = run([MajorityVote(completions_column="completions")], [row],
                tmp_path / "out").read_rows("data")
    assert out["answer"] == "5"
    assert out["votes"] == [{"answer": "5", "count": 2}, {"answer": "3", "count": 1}]


def test_majority_vote_gives_a_cut_sample_no_vote(tmp_path: Path) -> None:
    use(by_sample(["CUT:\\boxed{3}", "CUT:\\boxed{3}", "t</think>\\boxed{4}"]))
    [out] = run([MajorityVote(n=3)], [ROW], tmp_path / "out").read_rows("data")
    assert out["answer"] == "4" and out["reasoning"] == "t"
    assert out["completions_reasoning"] == ["\\boxed{3}", "\\boxed{3}", "t"]


# -- judges see the answer, not the trace -----------------------------------------------------------


def test_judged_text_cuts_the_trace() -> None:
    assert judged_text("<think>long musing</think>\n\nShort answer.") == "Short answer."
    assert judged_text("Plain answer.") == "Plain answer."
    assert judged_text("<think>never finished") == NO_FINAL_ANSWER


def test_the_pairwise_judge_is_shown_answers_without_traces(tmp_path: Path) -> None:
    def judge(request: Request, attempt: int) -> str:
        return json.dumps({"rationale": "compared", "verdict": "A"})

    backend = use(judge, ScriptedBackend)
    row = {"id": "p", "prompt": "explain", "completion": "<think>secret musing</think>Answer one.",
           "baseline": "<think>half a thought"}
    run([PairwiseJudge(candidates=["completion", "baseline"])], [row], tmp_path / "out")
    prompts = [str(call.messages[-1]["content"]) for call in backend.calls]  # type: ignore[index]
    assert len(prompts) == 2
    for prompt in prompts:
        assert "secret musing" not in prompt and "half a thought" not in prompt
        assert "Answer one." in prompt and NO_FINAL_ANSWER in prompt


def test_ultrafeedback_is_shown_answers_without_traces(tmp_path: Path) -> None:
    def judge(request: Request, attempt: int) -> str:
        shown = re.findall(r"### Text \d+\n(.*?)(?=\n\n### Text|\n\n## Answer)",
                           str(request.messages[1]["content"]), re.S)  # type: ignore[index]
        assert shown and all("musing" not in text for text in shown), shown
        return json.dumps({"evaluations": [{"rationale": "ok", "types": [], "rating": 3}
                                           for _ in shown]})

    backend = use(judge, ScriptedBackend)
    row = {"id": "u", "prompt": "explain",
           "completions": ["<think>musing</think>One.", "Two.", "<think>musing</think>Three."]}
    folder = run([UltraFeedbackJudge(aspects=["helpfulness"], shuffle=False)], [row],
                 tmp_path / "out")
    [out] = folder.read_rows("data")
    assert backend.calls and out["completions"][0] == "<think>musing</think>One."


# -- card and report --------------------------------------------------------------------------------


def _summary(**stats: Any) -> dict[str, Any]:
    backend = {"kind": "openai", "model": "r1", "requests_sent": 4, "cache_hits": 0, "retries": 0,
               "prompt_tokens": 40, "completion_tokens": 400, "failed_requests": 0,
               "responses": 4, "busy_seconds": 2.0, "wall_seconds": 1.0, **stats}
    return {"counts": {"data": 4, "failed": 0, "dropped": 0}, "failure_rate": 0.0,
            "failures_by_reason": {}, "drops_by_reason": {}, "backends": {"teacher": backend},
            "stages": {}, "sessions": [], "seconds": 1.0, "diversity": {}}


CONFIG = {"name": "traces", "backends": {}, "stages": [{"type": "complete"}]}


def test_the_card_counts_reasoning_tokens_apart() -> None:
    card = render_card(_summary(reasoning_tokens=300), CONFIG, ["prompt", "completion"])
    assert "of which reasoning" in card
    line = next(line for line in card.splitlines() if line.startswith("| teacher"))
    assert "| 400 | 300 |" in line
    assert "billed as output" in card

    estimated = render_card(_summary(reasoning_tokens=300, estimated_reasoning_tokens=300),
                            CONFIG, [])
    assert "300 (estimated)" in estimated


def test_a_card_without_reasoning_tokens_has_no_reasoning_column() -> None:
    card = render_card(_summary(), CONFIG, ["prompt", "completion"])  # an old record: no key
    assert "reasoning" not in card


def test_the_report_counts_reasoning_tokens_apart() -> None:
    page = render_report(_summary(reasoning_tokens=300, estimated_reasoning_tokens=100),
                         CONFIG, [], [])
    assert "<th>of which reasoning</th>" in page and "300 (100 estimated)" in page
    assert "of which reasoning" not in render_report(_summary(), CONFIG, [], [])
