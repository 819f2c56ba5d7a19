"""The shared reading of a conversation's text (stillroom.data.row_text / rows): every turn in
order, tool calls written out, tool turns named by their tool, content parts and None content."""

from __future__ import annotations

from typing import Any

from stillroom.data.rows import (
    answer_turn_text,
    calls_text,
    cell_text,
    cell_texts,
    conversation_answer,
    conversation_instruction,
    is_conversation_row,
    prompt_text,
    row_answer,
    transcript_text,
    turn_text,
    turn_texts,
)
from stillroom.llm.tool_calls import assistant_turn, calls_as_text, make_call, tool_turn

CALL = make_call("get_weather", {"city": "Paris"}, "call_0")
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TRAJECTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You help with weather."},
    {"role": "user", "content": "Weather in Paris?"},
    assistant_turn("", [CALL]),
    tool_turn(CALL, '{"temp_c": 18}'),
    {"role": "assistant", "content": "It is 18 C in Paris."},
]


def test_a_turn_is_its_content_then_its_calls() -> None:
    assert calls_as_text([CALL]) == CALL_TEXT  # the contract's writing, used as it is
    assert turn_text(TRAJECTORY[2]) == CALL_TEXT  # content "" and a call: the call
    assert turn_text(assistant_turn("Let me look.", [CALL])) == f"Let me look.\n{CALL_TEXT}"
    assert turn_text({"role": "assistant", "content": None, "tool_calls": [CALL]}) == CALL_TEXT
    assert turn_text({"role": "assistant", "content": None}) is None
    assert turn_text({"role": "assistant", "content": ""}) == ""
    # Content parts: their texts joined; an image part has none.
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "b"}]
    assert turn_text({"role": "user", "content": parts}) == "a\nb"
    # Two calls: two blocks, in order; Arrow's null-padded turns (tool_calls None) have none.
    second = make_call("get_time", "{}", "call_1")
    assert calls_text(assistant_turn("", [CALL, second])) == calls_as_text([CALL, second])
    assert calls_text({"role": "user", "content": "q", "tool_calls": None}) is None
    assert calls_text({"role": "assistant", "content": "", "tool_calls": [{"id": "x"}]}) is None


def test_cell_texts_keep_turn_order_and_include_calls_and_tool_results() -> None:
    assert cell_texts(TRAJECTORY) == [
        "You help with weather.", "Weather in Paris?", "", CALL_TEXT, '{"temp_c": 18}',
        "It is 18 C in Paris.",
    ]
    assert cell_texts(TRAJECTORY, ("user",)) == ["Weather in Paris?"]
    assert cell_texts(TRAJECTORY, ("tool",)) == ['{"temp_c": 18}']
    assert cell_text(TRAJECTORY, ("assistant",), sep="|") == f"{CALL_TEXT}|It is 18 C in Paris."
    assert turn_texts(TRAJECTORY, ("assistant",)) == [(2, CALL_TEXT), (4, "It is 18 C in Paris.")]
    # Turns without text (None content, no call) give none; a conversation of them, no text.
    silent = [{"role": "assistant", "content": None}, {"role": "user", "content": None}]
    assert cell_texts(silent) == [] and cell_text(silent) is None


def test_transcript_names_each_turn_and_the_tool_that_answered() -> None:
    assert transcript_text(TRAJECTORY) == (
        "System: You help with weather.\n\n"
        "User: Weather in Paris?\n\n"
        f"Assistant: {CALL_TEXT}\n\n"
        'Tool (get_weather): {"temp_c": 18}\n\n'
        "Assistant: It is 18 C in Paris."
    )
    # A turn without text keeps its place; items that are not messages are skipped.
    assert transcript_text([{"role": "user", "content": None}, "x", {"role": "assistant",
                                                                   "content": "a"}]) == (
        "User: \n\nAssistant: a")


def test_prompt_text_shows_calls_and_plain_rows_read_as_before() -> None:
    row = {"messages": TRAJECTORY}
    # The turns before the answer, the call and its result included.
    assert prompt_text(row) == transcript_text(TRAJECTORY[:4])
    assert CALL_TEXT in prompt_text(row) and "Tool (get_weather)" in prompt_text(row)
    # Rows without tools read exactly as they did.
    plain = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"}]}
    assert prompt_text(plain) == "System: s\n\nUser: q"
    assert prompt_text({"prompt": "q"}) == "q"
    assert prompt_text({"messages": [{"role": "user", "content": "q"}]}) == "q"


def test_the_answer_of_a_call_only_turn_is_its_call() -> None:
    calling = {"messages": TRAJECTORY[:3]}
    assert row_answer(calling) == ""  # the old reading: an empty answer
    assert answer_turn_text(calling) == CALL_TEXT
    assert answer_turn_text({"messages": TRAJECTORY}) == "It is 18 C in Paris."
    assert answer_turn_text({"prompt": "q", "completion": "a"}) == "a"
    assert answer_turn_text({"prompt": "q", "completion": [assistant_turn("", [CALL])]}) == CALL_TEXT
    assert answer_turn_text({"prompt": "q", "other": "b"}, "other") == "b"
    assert answer_turn_text({"messages": TRAJECTORY[:2]}) is None  # not answered
    assert answer_turn_text({"prompt": "q"}) is None


def test_conversation_modes() -> None:
    row = {"messages": TRAJECTORY}
    answer = answer_turn_text(row)
    assert answer is not None
    assert is_conversation_row(row) and not is_conversation_row({"prompt": "q"})
    assert conversation_answer(row, answer, "last_turn") == answer
    assert conversation_instruction(row, "last_turn") == prompt_text(row)
    whole = conversation_answer(row, answer, "whole")
    assert whole == transcript_text(TRAJECTORY)
    assert conversation_instruction(row, "whole") != prompt_text(row)
    # Earlier assistant turns may be rewritten (a judge cuts inline traces from them).
    traced = {"messages": [{"role": "user", "content": "q1"},
                           {"role": "assistant", "content": "<think>t</think>a1"},
                           {"role": "user", "content": "q2"}]}
    assert conversation_answer(traced, "a2", "whole", lambda text: text.split("</think>")[-1]) == (
        "User: q1\n\nAssistant: a1\n\nUser: q2\n\nAssistant: a2")
    # A row that is no conversation reads the same in both modes.
    text_row = {"prompt": "q", "completion": "a"}
    assert conversation_answer(text_row, "a", "whole") == "a"
    assert conversation_instruction(text_row, "whole") == "q"
