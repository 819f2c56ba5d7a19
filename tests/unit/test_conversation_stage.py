"""The conversation stage with a scripted backend: what each role is sent, bad input refused before
any request, truncated and empty turns, unfinished reasoning, the TRL format columns left out,
and per-turn seeds that do not depend on the order rows arrive in. Real servers:
tests/integration/test_conversation_echo.py and test_conversation_embedded.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.errors import InputError
from stillroom.generate import conversation_prompts as prompts
from stillroom.generate.conversation import Conversation
from stillroom.llm.types import Completion, Request
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig


def reply(request: Request, attempt: int) -> str:
    """The simulator asks "more on <what it was shown>"; the assistant answers "re: <question>"."""
    assert request.messages is not None
    if request.messages[0]["content"].startswith("You are role-playing"):
        return f"more on {request.messages[-1]['content']}"
    return f"re: {request.messages[-1]['content']}"


def use(script: Any = reply, backend_class: type[ScriptedBackend] = ScriptedBackend) -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = fakes.CURRENT["default"] = backend_class(script)
    return backend


def run(tmp_path: Path, stage: Conversation, rows: list[dict[str, Any]],
        name: str = "out") -> dict[str, list[dict[str, Any]]]:
    Pipeline([stage], input=rows, backends={"default": ScriptedConfig(max_retries=0)}).run(
        tmp_path / name, progress=False, max_failure_rate=1.0)
    folder = OutputFolder(tmp_path / name)
    return {kind: folder.read_rows(kind) for kind in ("data", "dropped", "failed")}


def test_each_role_is_sent_its_own_view_of_the_conversation(tmp_path: Path) -> None:
    backend = use()
    stage = Conversation(turns=2, system="Be brief.", user_system="You are role-playing {persona}.",
                         user_stop=["\n"])
    [row] = run(tmp_path, stage, [{"id": 1, "question": "Q?", "persona": "a cook"}])["data"]
    assert row["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "re: Q?"},
        {"role": "user", "content": "more on re: Q?"},
        {"role": "assistant", "content": "re: more on re: Q?"},
    ]
    assistant_1, simulator_2, assistant_2 = (call.messages for call in backend.calls)
    assert assistant_1 == row["messages"][:2]
    assert simulator_2 == [
        {"role": "system", "content": "You are role-playing a cook."},
        {"role": "user", "content": prompts.KICKOFF.text},
        {"role": "assistant", "content": "Q?"},
        {"role": "user", "content": "re: Q?"},
    ]
    assert assistant_2 == row["messages"][:4]
    params = [call.params for call in backend.calls]
    assert [(p.temperature, p.max_tokens, p.stop) for p in params] == [
        (0.7, 512, None), (1.0, 256, ("\n",)), (0.7, 512, None)]


@pytest.mark.parametrize(("row", "problem"), [
    ({"id": 1, "persona": "x"}, "an opening question in `question` or a topic in `topic`"),
    ({"id": 1, "question": "  "}, "an opening question in `question`"),
    ({"id": 1, "topic": "owls", "goal": 3}, "`goal` must be text"),
    ({"id": 1, "topic": "owls", "messages": [{"role": "user", "content": "hi"}]},
     "already has `messages`"),
])
def test_bad_input_is_refused_before_any_request(
    tmp_path: Path, row: dict[str, Any], problem: str
) -> None:
    backend = use()
    with pytest.raises(InputError, match=problem.replace("`", ".")):
        run(tmp_path, Conversation(), [{"id": 0, "question": "fine"}, row])
    assert backend.calls == []


def test_options_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(ValidationError, match="min_turns"):
        Conversation(turns=2, min_turns=3)
    with pytest.raises(ValidationError, match="stop_marker"):
        Conversation(stop_marker=" ")
    with pytest.raises(ValidationError, match="only {persona}, {goal} and {stop_marker}"):
        Conversation(user_system="You are {name}.")


def test_trl_format_columns_are_left_out_and_a_topic_row_is_opened_by_the_simulator(
    tmp_path: Path
) -> None:
    use()
    stage = Conversation(turns=1, question_column="prompt")
    rows = [{"id": "p", "prompt": "Q?", "completion": "old"}, {"id": "t", "topic": "owls"}]
    out = {row["id"]: row for row in run(tmp_path, stage, rows)["data"]}
    assert "prompt" not in out["p"] and "completion" not in out["p"]
    assert out["p"]["messages"][0] == {"role": "user", "content": "Q?"}
    opening = f"more on {prompts.kickoff('owls')}"
    assert out["t"]["messages"] == [{"role": "user", "content": opening},
                                    {"role": "assistant", "content": f"re: {opening}"}]
    assert out["t"]["topic"] == "owls"
    assert out["t"]["metadata"]["conversation"]["turns"][0]["source"] == "model"


class Scripted(ScriptedBackend):
    """Answers with a finish reason or trace state the script picks: text|length|unended."""

    async def generate(self, request: Request) -> Completion:
        completion = await super().generate(request)
        text, _, state = completion.text.partition("|")
        completion.text = text
        completion.finish_reason = "length" if state in ("length", "unended") else "stop"
        completion.reasoning_ended = state != "unended"
        return completion


def spoil_turn_2_answer(state: str) -> Any:
    def script(request: Request, attempt: int) -> str:
        text = reply(request, attempt)
        return f"{text}|{state}" if text == "re: more on re: Q?" else text
    return script


def test_a_truncated_turn_drops_the_conversation_or_is_kept_when_asked(tmp_path: Path) -> None:
    backend = use(spoil_turn_2_answer("length"), Scripted)
    out = run(tmp_path, Conversation(turns=3), [{"id": 1, "question": "Q?"}])
    assert out["data"] == []
    [dropped] = out["dropped"]
    assert dropped["drop_reason"] == "turn 2 (assistant) cut off at max_tokens (512)"
    assert len(dropped["messages"]) == 4
    assert len(backend.calls) == 3  # nothing asked after the spoiled turn

    use(spoil_turn_2_answer("length"), Scripted)
    [kept] = run(tmp_path, Conversation(turns=3, truncated_turn="keep"),
                 [{"id": 1, "question": "Q?"}], "keep")["data"]
    assert len(kept["messages"]) == 6
    finish = [t["finish_reason"] for t in kept["metadata"]["conversation"]["turns"]]
    assert finish == [None, "stop", "stop", "length", "stop", "stop"]


@pytest.mark.parametrize(("state", "kind", "reason"), [
    ("unended", "ReasoningTruncated", "turn 2 (assistant): the reasoning trace never ended"),
    ("", "EmptyTurn", "turn 2 (assistant) came back empty"),
])
def test_a_turn_that_is_no_message_fails_the_whole_conversation(
    tmp_path: Path, state: str, kind: str, reason: str
) -> None:
    def script(request: Request, attempt: int) -> str:
        text = reply(request, attempt)
        if text != "re: more on re: Q?":
            return text
        return "thinking...|unended" if state == "unended" else " "

    use(script, Scripted)
    out = run(tmp_path, Conversation(turns=3), [{"id": 1, "question": "Q?"}])
    assert out["data"] == [] and out["dropped"] == []
    [failed] = out["failed"]
    assert failed["error_type"] == kind and reason in failed["error"]
    assert "messages" not in failed


def test_each_turn_seed_comes_from_the_row_not_the_arrival_order(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"id": i, "question": f"Q{i}"} for i in range(4)]
    backend = use()
    first = run(tmp_path, Conversation(turns=2), rows, "a")["data"]
    assert len({call.params.seed for call in backend.calls}) == 12  # every request differs

    backend = use()
    second = run(tmp_path, Conversation(turns=2), rows[::-1], "b")["data"]
    assert backend.calls == []  # the same requests: all served from the request cache

    def seeds(out: list[dict[str, Any]]) -> dict[int, list[int | None]]:
        return {row["id"]: [t["seed"] for t in row["metadata"]["conversation"]["turns"]]
                for row in out}

    assert seeds(first) == seeds(second)


def test_the_summary_counts_assistant_turns_per_conversation() -> None:
    def conversation(turns: int) -> dict[str, Any]:
        return {"messages": [{"role": "system", "content": "s"}]
                + [{"role": role, "content": "x"} for _ in range(turns)
                   for role in ("user", "assistant")]}

    stage = Conversation()
    figures = stage.summarize([conversation(1), conversation(3), conversation(2), {"messages": None}])
    assert figures == {"conversations": 3, "turns_mean": 2.0, "turns_min": 1, "turns_max": 3}
    assert stage.result_line(figures) == (
        "conversation: 3 conversations, 2.0 assistant turns on average (min 1, max 3)")
    assert stage.summarize([]) == {} and stage.result_line({}) is None
