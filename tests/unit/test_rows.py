"""Row shapes (stillroom.data.rows): where `complete` writes the answer, and every reader finds it.

The answer goes where TRL looks for it: the last turn of `messages`, an assistant message list in
`completion` for a conversational `prompt`, a text `completion` for a text `prompt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import (
    answer_text,
    prompt_messages,
    row_answer,
    with_answer,
)
from stillroom.stages import Complete
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture(autouse=True)
def fresh_backend() -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = ScriptedBackend()
    fakes.CURRENT["default"] = backend
    return backend


def complete(rows: list[dict[str, Any]], out: Path, **options: Any) -> list[dict[str, Any]]:
    result = Pipeline([Complete(**options)], input=rows, backends={"default": ScriptedConfig()}).run(
        out, progress=False, diversity_embeddings=False)
    assert result.counts["data"] == len(rows), OutputFolder(out).read_rows("failed")
    return sorted(OutputFolder(out).read_rows("data"), key=lambda row: row["id"])


# -- the shapes `complete` writes ------------------------------------------------------------------


def test_complete_writes_the_answer_in_each_rows_trl_shape(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    (text,) = complete([{"id": "t", "prompt": "q1"}], tmp_path / "text")
    assert text["completion"] == "answer to q1 #0"

    (conversational,) = complete([{"id": "c", "prompt": [SYSTEM, user("q2")]}], tmp_path / "conv")
    assert conversational["prompt"] == [SYSTEM, user("q2")]
    assert conversational["completion"] == [assistant("answer to q2 #0")]

    fresh_backend.calls.clear()
    chat = complete(
        [
            {"id": "m1", "messages": [user("q3")]},
            # Ends in an answer: regenerated, and a stale `completion` beside it goes too.
            {"id": "m2", "messages": [user("hi"), assistant("hello"), user("q4"),
                                      assistant("OLD")], "completion": "STALE"},
        ],
        tmp_path / "chat",
    )
    assert chat[0]["messages"] == [user("q3"), assistant("answer to q3 #0")]
    assert chat[1]["messages"] == [user("hi"), assistant("hello"), user("q4"),
                                   assistant("answer to q4 #0")]
    for row in chat:  # no text `completion` beside the conversation: TRL reads either shape
        assert row.get("completion") is None
    sent = sorted((request.messages for request in fresh_backend.calls), key=len)
    assert sent == [[user("q3")], [user("hi"), assistant("hello"), user("q4")]]

    # Both: asked with `messages` (worked examples for the teacher), answered beside the `prompt`
    # (the student's view), which is what TRL trains when a row has a `prompt`.
    fresh_backend.calls.clear()
    (both,) = complete([{"id": "b", "prompt": "q5", "messages": [SYSTEM, user("q5 shown")]}],
                       tmp_path / "both")
    assert fresh_backend.calls[0].messages == [SYSTEM, user("q5 shown")]
    assert both["completion"] == "answer to q5 shown #0"
    assert both["messages"] == [SYSTEM, user("q5 shown")]


def test_n_samples_stay_texts_and_leave_the_conversation_as_it_came(tmp_path: Path) -> None:
    rows = [{"id": "m", "messages": [user("q")]}, {"id": "p", "prompt": [user("r")]}]
    out = complete(rows, tmp_path / "out", n=2)
    assert out[0]["messages"] == [user("q")] and out[0]["completions"] == [
        "answer to q #0", "answer to q #1"]
    assert out[1]["prompt"] == [user("r")] and out[1]["completions"] == [
        "answer to r #0", "answer to r #1"]
    # A custom output column holds text whatever the shape.
    (custom,) = complete([{"id": "m", "messages": [user("q")]}], tmp_path / "custom",
                         output_column="draft")
    assert custom["draft"] == "answer to q #0" and custom["messages"] == [user("q")]


def test_a_conversational_prompt_ending_in_an_answer_is_refused_before_any_request() -> None:
    stage = Complete()
    assert stage.check_row({"prompt": [user("q")]}) is None
    problem = stage.check_row({"prompt": [user("q"), assistant("a")]}) or ""
    assert "must not end with an assistant turn" in problem
    assert "holds no turn before the answer" in (stage.check_row({"messages": [assistant("a")]}) or "")
    assert "`prompt[0]`" in (stage.check_row({"prompt": ["not a message"]}) or "")


@pytest.mark.parametrize(
    ("template", "wrong"),
    [
        ("{prompt", "not a valid template"),
        ("Answer: prompt}", "not a valid template"),
        ("Answer the question.", "names no column"),
        ("Q: {0}", "positional field"),
        ("Q: {}", "positional field"),
        ("Q: {question!x}", "unknown conversion"),
    ],
)
def test_an_unusable_prompt_template_is_a_validation_error_at_construction(
    template: str, wrong: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Complete(prompt_template=template)
    (error,) = caught.value.errors()
    assert error["loc"] == ("prompt_template",)
    assert "prompt_template" in error["msg"] and wrong in error["msg"]


def test_a_usable_template_builds_and_reads_its_columns() -> None:
    stage = Complete(prompt_template="{{literal}} {instruction}\n\n{meta[hint]} {input!r}")
    assert stage.check_row({"instruction": "i", "input": "x", "meta": {"hint": "h"}}) is None
    assert "['meta']" in (stage.check_row({"instruction": "i", "input": "x"}) or "")


# -- reading the shapes back -------------------------------------------------------------------------


def test_row_answer_and_prompt_messages_read_every_shape() -> None:
    text = {"prompt": "q", "completion": "a"}
    conversational = {"prompt": [SYSTEM, user("q")], "completion": [assistant("a")]}
    chat = {"messages": [SYSTEM, user("q"), assistant("a")]}
    older = {"messages": [user("q"), assistant("OLD")], "completion": "a"}  # before this change
    for row in (text, conversational, chat, older):
        assert row_answer(row) == "a"
    assert prompt_messages(text) == [user("q")]
    assert prompt_messages(conversational) == [SYSTEM, user("q")]
    assert prompt_messages(chat) == [SYSTEM, user("q")]
    assert prompt_messages(older) == [user("q")]
    assert row_answer({"messages": [user("q")]}) is None  # not answered yet
    assert row_answer(chat, "response") is None  # only `completion` falls back to `messages`
    assert answer_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]) == "a"
    assert answer_text(["a", "b"]) is None and answer_text(3) is None


def test_with_answer_writes_and_row_answer_reads_the_same_answer() -> None:
    for row in ({"prompt": "q"}, {"prompt": [user("q")]}, {"messages": [user("q"), assistant("x")]}):
        answered = with_answer(row, "A")
        assert row_answer(answered) == "A"
        assert prompt_messages(answered) == prompt_messages(row)
        assert with_answer(answered, "B") == with_answer(row, "B")  # replaced, never appended twice


def test_readers_of_the_answer_take_a_messages_row(tmp_path: Path) -> None:
    from stillroom.curate.heuristics import HeuristicFilter
    from stillroom.curate.ifd import example_of
    from stillroom.curate.select import answer_length
    from stillroom.feedback.judging import check_instruction, transcript
    from stillroom.feedback.rubric import RubricJudge
    from stillroom.stages.teacher_logprobs import TeacherLogprobs
    from stillroom.verify.stage import verify

    chat = {"id": "m", "messages": [user("2+2?"), assistant("no"), user("and 2+3?"),
                                    assistant("It is 5.")], "answer": "5"}
    conversational = {"id": "c", "prompt": [user("2+3?")], "completion": [assistant("It is 5.")],
                      "answer": "5"}
    for row in (chat, conversational):
        assert [text for _, text in HeuristicFilter().texts(row, "completion") or []] == [
            "It is 5."]
        assert example_of(row).answer == "It is 5."  # IFD
        assert RubricJudge().check_row(row) is None
        assert TeacherLogprobs(backend="teacher").check_row(row) is None
        assert answer_length(row) == len("It is 5.")  # the final answer, not every turn
        assert check_instruction(row) is None
    assert transcript(conversational) == "2+3?"
    assert transcript(chat) == "User: 2+2?\n\nAssistant: no\n\nUser: and 2+3?"

    result = verify([chat, conversational], tmp_path / "verified", kind="regex",
                    options={"pattern": r"It is \d\."}, progress=False, diversity_embeddings=False)
    assert result.summary["verify"]["passed"] == 2
    data = OutputFolder(tmp_path / "verified").read_rows("data")
    assert all(row["passed"] for row in data)
    assert {row["id"]: row.get("completion") for row in data}["m"] is None  # the row is unchanged
