"""The `conversation` option of the judges and the verify stage, with a scripted judge: what each
one reads of a tool-calling conversation (its last turn with the turns before as context, or the
whole transcript), and that a row that is no conversation reads as before."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import WHOLE_CONVERSATION_REQUEST, transcript_text
from stillroom.feedback.pairwise import PairwiseJudge
from stillroom.feedback.reward_model import conversation as reward_conversation
from stillroom.feedback.rubric import RubricJudge
from stillroom.feedback.ultrafeedback import UltraFeedbackJudge
from stillroom.llm.tool_calls import assistant_turn, calls_as_text, make_call, tool_turn
from stillroom.llm.types import Request
from stillroom.verify.stage import Verify
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

CALL = make_call("get_weather", {"city": "Paris"}, "call_0")
CALL_TEXT = calls_as_text([CALL])
TRAJECTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    assistant_turn("", [CALL]),
    tool_turn(CALL, '{"temp_c": 18}'),
    {"role": "assistant", "content": "It is 18 C."},
]
CONTEXT = transcript_text(TRAJECTORY[:3])  # what comes before the last turn


@pytest.fixture(autouse=True)
def fresh() -> None:
    fakes.CURRENT.clear()


def judge(script: Any) -> ScriptedBackend:
    backend = ScriptedBackend(script)
    fakes.CURRENT["default"] = backend
    return backend


def run(stages: list[Any], rows: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    pipeline = Pipeline(stages, input=rows, backends={"default": ScriptedConfig(max_retries=0)})
    result = pipeline.run(out, progress=False, max_failure_rate=1.0)
    assert result.counts["failed"] == 0, OutputFolder(out).read_rows("failed")
    return OutputFolder(out).read_rows("data")


def asked(request: Request) -> str:
    assert request.messages is not None
    return str(request.messages[-1]["content"])


def section(text: str, title: str) -> str:
    """The body of a ``## title`` section of a judge prompt."""
    found = re.search(rf"## {re.escape(title)}\n(.*?)\n\n## ", text, re.S)
    assert found, text
    return found.group(1)


def grade(request: Request, attempt: int) -> str:
    return json.dumps({"rationale": "fine", "rating": 7})


def test_rubric_grades_the_last_turn_with_the_tool_turns_as_context(tmp_path: Path) -> None:
    backend = judge(grade)
    [row] = run([RubricJudge()], [{"id": "t", "messages": TRAJECTORY}], tmp_path / "out")
    assert row["score"] == 7
    prompt = asked(backend.calls[0])
    assert section(prompt, "Request") == CONTEXT
    assert CALL_TEXT in CONTEXT and 'Tool (get_weather): {"temp_c": 18}' in CONTEXT
    assert section(prompt, "Assistant's answer") == "It is 18 C."


def test_rubric_whole_grades_the_transcript(tmp_path: Path) -> None:
    backend = judge(grade)
    run([RubricJudge(conversation="whole")], [{"id": "t", "messages": TRAJECTORY}], tmp_path / "o")
    prompt = asked(backend.calls[0])
    assert section(prompt, "Request") == WHOLE_CONVERSATION_REQUEST
    assert section(prompt, "Assistant's answer") == transcript_text(TRAJECTORY)


def test_an_answer_that_only_calls_a_tool_is_graded_as_its_call(tmp_path: Path) -> None:
    backend = judge(grade)
    [row] = run([RubricJudge()], [{"id": "c", "messages": TRAJECTORY[:2]}], tmp_path / "out")
    assert row["score"] == 7  # it was "`completion` is missing, empty or not text" before
    prompt = asked(backend.calls[0])
    assert section(prompt, "Request") == "Weather in Paris?"
    assert section(prompt, "Assistant's answer") == CALL_TEXT


def test_a_row_that_is_no_conversation_reads_the_same_in_both_modes(tmp_path: Path) -> None:
    prompts = []
    for seed, mode in enumerate(("last_turn", "whole")):
        backend = judge(grade)
        # Another seed for each: a request of its own, not the first one's from the cache.
        run([RubricJudge(conversation=mode, seed=seed)],
            [{"id": "p", "prompt": "q", "completion": "a"}], tmp_path / mode)
        prompts.append(asked(backend.calls[0]))
    assert prompts[0] == prompts[1]
    assert section(prompts[0], "Request") == "q" and section(prompts[0], "Assistant's answer") == "a"


def test_mt_bench_preset_keeps_its_own_conversation_reading() -> None:
    with pytest.raises(ValidationError, match="preset mt_bench"):
        RubricJudge(preset="mt_bench", conversation="whole")


def test_pairwise_shows_two_candidate_turns_or_two_whole_transcripts(tmp_path: Path) -> None:
    row = {"id": "p", "messages": TRAJECTORY[:3], "completions": ["It is 18 C.", "No idea."]}
    for seed, mode in enumerate(("last_turn", "whole")):
        backend = judge(lambda request, attempt: '{"rationale": "r", "verdict": "A"}')
        [out] = run([PairwiseJudge(conversation=mode, seed=seed)], [row], tmp_path / mode)
        assert out["winner"] == "tie"  # "A" in both orders: position bias
        prompt = asked(backend.calls[0])  # order ab
        if mode == "last_turn":
            assert section(prompt, "Request") == CONTEXT
            assert section(prompt, "Answer A") == "It is 18 C."
        else:
            assert section(prompt, "Request") == WHOLE_CONVERSATION_REQUEST
            assert section(prompt, "Answer A") == transcript_text(TRAJECTORY)
            assert section(prompt, "Answer B") == transcript_text(
                [*TRAJECTORY[:3], {"role": "assistant", "content": "No idea."}])


def rate_each(request: Request, attempt: int) -> str:
    texts = re.findall(r"### Text \d+\n", asked(request))
    entry = {"rationale": "ok", "types": [], "rating": 4}
    return json.dumps({"evaluations": [entry] * len(texts)})


def test_ultrafeedback_whole_shows_each_completion_at_the_end_of_the_conversation(
    tmp_path: Path,
) -> None:
    row = {"id": "u", "messages": TRAJECTORY[:3], "completions": ["It is 18 C.", "No idea."]}
    backend = judge(rate_each)
    [out] = run([UltraFeedbackJudge(aspects=["helpfulness"], conversation="whole", shuffle=False)],
                [row], tmp_path / "out")
    assert out["scores"] == [4.0, 4.0]
    prompt = asked(backend.calls[0])
    assert section(prompt, "Instruction") == WHOLE_CONVERSATION_REQUEST
    assert f"### Text 1\n{transcript_text(TRAJECTORY)}\n\n### Text 2\n" in prompt
    backend = judge(rate_each)
    run([UltraFeedbackJudge(aspects=["helpfulness"], shuffle=False)], [row], tmp_path / "last")
    prompt = asked(backend.calls[0])
    assert section(prompt, "Instruction") == CONTEXT
    assert "### Text 1\nIt is 18 C.\n\n### Text 2\nNo idea.\n\n" in prompt


def test_verify_reads_the_last_turn_or_the_whole_conversation(tmp_path: Path) -> None:
    rows = [{"id": "answered", "messages": TRAJECTORY},
            {"id": "calling", "messages": TRAJECTORY[:2]},
            {"id": "plain", "prompt": "Weather in Paris?", "completion": "It is 18 C."}]
    asks_paris = {"pattern": "Paris", "mode": "search"}
    last = {row["id"]: row for row in run(
        [Verify(kind="regex", options=asks_paris)], rows, tmp_path / "last")}
    # The last turn: the final answer does not say Paris; the calling turn's call does.
    assert last["answered"]["passed"] is False
    assert last["calling"]["passed"] is True
    assert last["plain"]["passed"] is False
    whole = {row["id"]: row for row in run(
        [Verify(kind="regex", options=asks_paris, conversation="whole")], rows, tmp_path / "whole")}
    assert whole["answered"]["passed"] is True  # the user turn is part of the transcript
    assert whole["plain"]["passed"] is False  # no conversation: read as before
    # The rows themselves are unchanged (Parquet pads each turn with the others' keys as nulls).
    kept = [{k: v for k, v in turn.items() if v is not None}
            for turn in whole["answered"]["messages"]]
    assert kept == TRAJECTORY and whole["answered"].get("completion") is None


def test_reward_model_reads_calls_and_tool_results_as_plain_turns() -> None:
    chat = reward_conversation(TRAJECTORY, "It is 18 C.")
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant"]
    assert chat[1]["content"] == CALL_TEXT
    assert '{"temp_c": 18}' in chat[2]["content"] and "<tool_response>" in chat[2]["content"]
    # No "None" text for a turn without content, and plain conversations are unchanged.
    assert reward_conversation([{"role": "user", "content": None}], "a")[0]["content"] == ""
    plain = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "old"}]
    assert reward_conversation(plain, "a") == [{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "a"}]


def test_a_pair_from_tool_calling_candidates_keeps_the_calls_as_calls(tmp_path: Path) -> None:
    calling = [*TRAJECTORY[:1], assistant_turn("", [CALL])]
    guessing = [*TRAJECTORY[:1], {"role": "assistant", "content": "Probably sunny."}]
    row = {"id": "p", "messages": TRAJECTORY[:1], "calls": calling, "guess": guessing}
    # The judge prefers whichever answer calls the tool, in both orders.
    backend = judge(lambda request, attempt: json.dumps({
        "rationale": "r",
        "verdict": "A" if section(asked(request), "Answer A").startswith("<tool_call>") else "B"}))
    [out] = run([PairwiseJudge(candidates=["guess", "calls"], as_pair=True)], [row], tmp_path / "o")
    assert out["winner"] == "b"
    assert CALL_TEXT in section(asked(backend.calls[0]), "Answer B")  # the judge read the call
    assert out["prompt"][0]["content"] == "Weather in Paris?"
    [chosen] = out["chosen"]
    assert chosen["tool_calls"][0]["function"]["name"] == "get_weather"  # TRL's shape, kept
    assert out["rejected"][0]["content"] == "Probably sunny."


def test_heuristics_do_not_call_a_turn_that_only_calls_a_tool_empty(tmp_path: Path) -> None:
    from stillroom.curate.heuristics import HeuristicFilter

    rows = [{"id": "calling", "messages": TRAJECTORY[:2]},
            {"id": "empty", "messages": [TRAJECTORY[0], {"role": "assistant", "content": ""}]}]
    result = Pipeline([HeuristicFilter()], input=rows).run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 1, "failed": 0, "dropped": 1}
    [dropped] = OutputFolder(tmp_path / "out").read_rows("dropped")
    assert dropped["id"] == "empty" and dropped["drop_reason"].startswith("empty:")
