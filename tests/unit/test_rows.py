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
    from stillroom.api import verify
    from stillroom.curate.heuristics import HeuristicFilter
    from stillroom.curate.ifd_scoring import example_of
    from stillroom.curate.select_values import answer_length
    from stillroom.feedback.judging import check_instruction, transcript
    from stillroom.feedback.rubric import RubricJudge
    from stillroom.stages.teacher_logprobs import TeacherLogprobs

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
    assert result.summary["stage_results"]["verify"]["passed"] == 2
    data = OutputFolder(tmp_path / "verified").read_rows("data")
    assert all(row["passed"] for row in data)
    assert {row["id"]: row.get("completion") for row in data}["m"] is None  # the row is unchanged


# -- the row model: one place to read and write a row ------------------------------------------------


def test_cell_texts_read_every_cell_shape() -> None:
    from stillroom.data.rows import cell_text, cell_texts

    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "b"}]
    chat = [SYSTEM, user("q"), {"role": "assistant", "content": parts},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]
    assert cell_texts("x") == ["x"]
    assert cell_texts(["x", "", "y"]) == ["x", "", "y"]
    assert cell_texts(user("q")) == ["q"]
    assert cell_texts(parts) == ["a", "b"]  # an image part has no text, and is no error
    assert cell_texts(chat) == ["Be brief.", "q", "a", "b"]  # a tool-call turn gives no text
    assert cell_texts(chat, ("user",)) == ["q"]
    assert cell_texts(chat, ("assistant",)) == ["a", "b"]
    assert cell_texts([]) == []
    for not_text in (None, 3, {"id": 1}, ["x", 3], [user("q"), None]):
        assert cell_texts(not_text) is None, not_text

    assert cell_text(chat) == "Be brief.\nq\na\nb"
    assert cell_text(chat, ("user",), sep="\n\n") == "q"
    assert cell_text(["x", "", "y"], sep="\n\n") == "x\n\ny"  # empty texts left out of the join
    assert cell_text("") == ""  # an empty text is a text
    assert cell_text([]) is None and cell_text(chat, ("tool",)) is None and cell_text(3) is None


def test_turns_of_a_conversation() -> None:
    from stillroom.data.rows import answer_turn, content_text, last_turn, turn_texts

    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    chat = [SYSTEM, user("q1"), assistant("x"), "not a message", {"role": "user", "content": parts},
            assistant("y")]
    assert content_text(parts) == "a\nb" and content_text(parts, sep="") == "ab"
    assert content_text([{"type": "image_url"}]) is None and content_text(None) is None
    assert turn_texts(chat, ("user",)) == [(1, "q1"), (4, "a\nb")]
    assert turn_texts(chat) == [(0, "Be brief."), (1, "q1"), (2, "x"), (4, "a\nb"), (5, "y")]
    assert last_turn(chat, "assistant") == 5
    assert last_turn(chat, "user", before=5) == 4
    assert last_turn(chat, "assistant", before=5) == 2
    assert last_turn(chat, "tool") is None
    assert answer_turn(chat) == 5
    assert answer_turn(chat[:5]) is None  # ends with the user's turn: not answered
    assert answer_turn([*chat, "junk"]) == 5  # items that are not messages are skipped
    assert answer_turn([]) is None


def test_prompt_text_is_what_a_judge_reads() -> None:
    from stillroom.data.rows import prompt_text

    assert prompt_text({"prompt": "q"}) == "q"
    assert prompt_text({"prompt": [user("q")], "completion": [assistant("a")]}) == "q"
    assert prompt_text({"messages": [SYSTEM, user("q"), assistant("a")]}) == (
        "System: Be brief.\n\nUser: q")
    assert prompt_text({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "q"}]}]}) == "q"
    assert prompt_text({"completion": "a"}) is None
    assert prompt_text({"messages": [assistant("a")]}) is None  # nothing before the answer


def test_answer_cell_and_with_answer_agree_on_the_conversational_shape() -> None:
    from stillroom.data.rows import answer_cell

    assert answer_cell("A", False) == "A"
    assert answer_cell("A", True) == [assistant("A")]
    assert with_answer({"prompt": [user("q")]}, "A")["completion"] == answer_cell("A", True)
    assert with_answer({"prompt": "q"}, "A")["completion"] == answer_cell("A", False)


def test_row_key_is_the_id_or_a_stable_id_from_the_prompt() -> None:
    from stillroom.data.rows import derived_id, row_key

    assert row_key({"id": 7, "prompt": "q"}) == "7"
    assert row_key({"prompt": "q"}) == derived_id("prompt", "q") == row_key({"prompt": "q"})
    chat = [user("q")]
    assert row_key({"messages": chat, "prompt": "other"}) == derived_id("prompt", chat)
    assert row_key({"prompt": "q"}) != row_key({"prompt": "r"})


def test_lineage_is_written_through_the_row_model() -> None:
    from stillroom.data import lineage, rows

    for name in ("with_lineage", "row_id", "seed_id_of", "derived_id", "PromptTemplate",
                 "LINEAGE_KEYS", "row_key"):
        assert getattr(lineage, name) is getattr(rows, name), name
    template = rows.PromptTemplate("t", "Q: {question}")
    child = rows.with_lineage({"id": "c", "metadata": {"gen": {"seed_id": "s0"}}}, "judge",
                              method="m", step="s", parent_id="p", seed_id="s0", model="x",
                              template=template, extra=1)
    entry = child["metadata"]["judge"]
    assert set(rows.LINEAGE_KEYS) <= set(entry) and entry["extra"] == 1
    assert entry["template"] == template.version and template.version.startswith("t@")
    assert child["metadata"]["gen"] == {"seed_id": "s0"}  # earlier entries kept
    assert rows.seed_id_of(child) == "s0" and rows.seed_id_of({"id": 3}) == "3"


def test_the_generation_input_is_checked_and_built_by_the_row_model() -> None:
    from stillroom.data.rows import build_messages, check_messages, check_prompt

    assert check_prompt({"prompt": "q"}) is None
    assert "empty" in (check_prompt({"prompt": "  "}) or "")
    assert "must be text" in (check_prompt({"prompt": [user("q")]}, messages_allowed=False) or "")
    assert "['b']" in (check_prompt({"a": 1}, prompt_template="{a} {b}") or "")
    assert "`messages[0].role`" in (check_messages([{"role": "robot", "content": "x"}]) or "")
    assert build_messages({"messages": [user("q"), assistant("old")]}, system="S") == [
        {"role": "system", "content": "S"}, user("q")]
    assert build_messages({"prompt": [SYSTEM, user("q")]}, system="S") == [SYSTEM, user("q")]
    assert build_messages({"a": "x"}, "Q: {a}") == [user("Q: x")]


def _stillroom_imports(folder: str) -> dict[str, set[str]]:
    """Per module file under src/stillroom/<folder>: the stillroom modules it imports."""
    import ast

    root = Path(__file__).resolve().parents[2] / "src" / "stillroom" / folder
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(root.parent))] = {n for n in names if n.startswith("stillroom.")}
    return found


def test_no_import_circle_through_the_row_model() -> None:
    # data/ is at the bottom: the row model imports no stage folder.
    for module, names in _stillroom_imports("data").items():
        above = {n for n in names
                 if n.split(".")[1] in ("generate", "feedback", "verify", "curate", "stages",
                                        "pipeline", "train", "evaluate")}
        assert not above, f"{module} imports {sorted(above)}"
    # Stage folders read rows through data.rows, not through the `complete` stage's module.
    for folder in ("generate", "feedback", "verify"):
        for module, names in _stillroom_imports(folder).items():
            assert not any(n.startswith("stillroom.stages") for n in names), module


def test_finish_reasons_are_read_from_every_place_a_stage_records_them() -> None:
    from stillroom.data.rows import finish_reasons

    row = {
        "finish_reason": "stop",
        "completion_sources": [{"finish_reason": "length"}, "junk", {"model": "m"}],
        "metadata": {"complete": {"finish_reasons": ["stop", 3, "length"]}, "other": "x",
                     "judge": {"finish_reason": None}},
    }
    assert finish_reasons(row) == [
        ("finish_reason", "stop"),
        ("completion_sources[0].finish_reason", "length"),
        ("metadata.complete.finish_reasons[0]", "stop"),
        ("metadata.complete.finish_reasons[2]", "length"),
    ]
    assert finish_reasons({"prompt": "q"}) == []
