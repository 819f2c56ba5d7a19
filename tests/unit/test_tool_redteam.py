"""Red-team findings of issue 19 on the tool stages (F3, F5 and the small ones), with a scripted
model and fake tool sets; the real sandbox, MCP server and echo server are in
tests/integration/test_tool_redteam.py."""

from __future__ import annotations

from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.generate.tool_check import ToolCheck
from stillroom.generate.tool_use import ToolUse
from stillroom.llm.tool_calls import tools_text
from stillroom.pipeline.stage import RowFailure
from stillroom.tools import ToolResult
from tests.unit.test_tool_stages import (
    TOOLS,
    FakeClient,
    FakeTools,
    answer,
    calls,
    checked_row,
    conversation,
    ctx,
    faked,
    run,
    two_turns,
    yes,
)


class BrokenTools(FakeTools):
    """``add`` fails with ``kind`` (what a dead MCP server, a hung call or a sandbox that could
    not start gives)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((name, arguments))
        return ToolResult.failed(self.kind, "lost the MCP server: EOF")  # type: ignore[arg-type]


ROW = {"id": "r", "messages": [{"role": "user", "content": "2+3?"}], "tools": tools_text(TOOLS)}


# -- F3: infrastructure failures send the row to failed/ --------------------------------------


@pytest.mark.parametrize("kind", ["ServerError", "Timeout"])
def test_tool_use_fails_the_row_when_the_tool_could_not_run(kind: str) -> None:
    with pytest.raises(RowFailure) as caught:
        run(faked(ToolUse, BrokenTools(kind)).process(ROW, ctx(FakeClient(two_turns))))
    assert caught.value.kind == kind and "'add' did not run" in str(caught.value)


def test_tool_use_timeout_can_be_a_tool_turn() -> None:
    out = run(faked(ToolUse, BrokenTools("Timeout"), timeout_fails_row=False).process(
        ROW, ctx(FakeClient(two_turns))))
    assert out["messages"][2]["content"].startswith("Timeout:")
    assert out["metadata"]["s"]["calls"][0]["status"] == "Timeout"


def test_tool_use_keeps_genuine_tool_errors_as_tool_turns() -> None:
    for kind in ("ToolError", "InvalidArguments", "UnknownTool"):
        out = run(faked(ToolUse, BrokenTools(kind)).process(ROW, ctx(FakeClient(two_turns))))
        assert out["messages"][2]["content"].startswith(f"{kind}:")


@pytest.mark.parametrize("kind", ["ServerError", "Timeout"])
def test_tool_check_execution_fails_the_row_not_drops_it(kind: str) -> None:
    messages = conversation(calls(("add", {"a": 2, "b": 3})), final=None)
    with pytest.raises(RowFailure) as caught:
        run(faked(ToolCheck, BrokenTools(kind)).process(checked_row(messages),
                                                         ctx(FakeClient(yes))))
    assert caught.value.kind == kind
    # ...while a tool's own error is still the execution check's drop.
    dropped = run(faked(ToolCheck, BrokenTools("ToolError")).process(
        checked_row(messages), ctx(FakeClient(yes))))
    assert dropped[0].reason.startswith("execution check: call 1 (add): ToolError")


# -- F5: tool_choice and name clashes are config errors ----------------------------------------


def parse(tmp_path: Any, stage: str) -> Any:
    from stillroom.pipeline.config import parse_pipeline_text

    (tmp_path / "t.py").write_text(
        'def add(a: int, b: int) -> int:\n    """Add."""\n    return a + b\n')
    return parse_pipeline_text("stages:\n  - type: tool_use\n    tools: {python: t.py}\n" + stage,
                               "p.yaml", base_dir=tmp_path)


def test_tool_choice_typo_is_a_config_error_with_file_line_and_key(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, "    tool_choice: ad\n")
    message = str(caught.value)
    assert "p.yaml:4" in message and "tool_choice" in message
    assert "'ad' is neither auto, none, required nor a tool of tools.python (add)" in message
    assert "did you mean 'add'" in message


@pytest.mark.parametrize("choice", ["none", "auto", "required", "add"])
def test_tool_choice_keywords_and_tools_are_accepted(tmp_path: Any, choice: str) -> None:
    model, _ = parse(tmp_path, f"    tool_choice: {choice}\n")
    stage = model.stages[0]
    expected = choice if choice != "add" else {"type": "function", "function": {"name": "add"}}
    assert stage._choice(0, ["add"]) == expected and stage._choice(1, ["add"]) == "auto"


def test_tool_choice_none_is_sent_as_the_keyword() -> None:
    client = FakeClient(lambda r: answer("no tools today"))
    out = run(faked(ToolUse, FakeTools(), tool_choice="none").process(ROW, ctx(client)))
    assert client.requests[0].params.tool_choice == "none"
    assert out["messages"][-1]["content"] == "no tools today"


def test_tools_file_error_keeps_the_tools_file_line(tmp_path: Any) -> None:
    from stillroom.pipeline.config import parse_pipeline_text

    (tmp_path / "bad.py").write_text('def ok(x: int) -> int:\n    """d"""\n    return x\n\n'
                                     'def f(*args):\n    """d"""\n')
    with pytest.raises(ConfigError) as caught:
        parse_pipeline_text("stages:\n  - type: tool_use\n    tools: {python: bad.py}\n",
                            "p.yaml", base_dir=tmp_path)
    assert f"{tmp_path / 'bad.py'}:5" in str(caught.value)


def test_check_backends_lists_nothing_without_mcp(tmp_path: Any) -> None:
    model, _ = parse(tmp_path, "")
    model.stages[0].check_backends({})  # nothing to list; must not try to start anything



# -- tools files: guarded imports, result sizes -------------------------------------------------


def test_an_import_guarded_by_except_import_error_is_allowed(tmp_path: Any) -> None:
    import asyncio

    from stillroom.tools.python_schema import read_tools
    from stillroom.tools.python_tools import PythonToolSet

    guarded = tmp_path / "guarded.py"
    guarded.write_text("try:\n    import numpy\nexcept ImportError:\n    numpy = None\n\n"
                       "try:\n    from yaml import safe_load\nexcept (ModuleNotFoundError, OSError):\n"
                       "    safe_load = None\n\n"
                       'def f(x: str) -> str:\n    """d"""\n    return f"{x} {numpy is None}"\n')
    assert [tool.name for tool in read_tools(guarded, functions=None, key="tools.python")] == ["f"]
    assert asyncio.run(PythonToolSet(guarded).call("f", {"x": "a"})) == ToolResult("a True")
    unguarded = tmp_path / "unguarded.py"
    unguarded.write_text("try:\n    import numpy\nexcept ValueError:\n    numpy = None\n")
    with pytest.raises(ConfigError, match="imports 'numpy'") as caught:
        read_tools(unguarded, functions=None, key="tools.python")
    assert caught.value.line == 2


def test_result_size_is_judged_on_the_result_and_told_with_the_limit(tmp_path: Any) -> None:
    import asyncio

    from stillroom.tools.python_tools import PythonToolSet

    path = tmp_path / "sizes.py"
    path.write_text('def near(x: int) -> str:\n    """Escapes to twice its size."""\n'
                    '    return "\\n" * 600_000\n\n'
                    'def big(x: int) -> str:\n    """Too big."""\n    return "a" * 1_500_000\n')
    toolset = PythonToolSet(path)
    near = asyncio.run(toolset.call("near", {"x": 1}))
    assert near.ok and near.content == "\n" * 600_000
    big = asyncio.run(toolset.call("big", {"x": 1}))
    assert big.error == "ToolError: big returned 1,500,000 bytes, more than the limit of " \
        "1,000,000 bytes"


# -- the emulation's parser ------------------------------------------------------------------


@pytest.mark.parametrize(("block", "arguments"), [
    ('{"name": "add", "arguments": {"a": 1}', {"a": 1}),  # the outer } missing
    ('{"name": "add", "arguments": {"a": 1, "b": {"c": 2}}', {"a": 1, "b": {"c": 2}}),
    ('{"name": "add", "arguments": {"a": 1}, "extra": oops}', {"a": 1}),  # broken after them
    ('{"name": "add", "parameters": {"a": 3}', {"a": 3}),
])
def test_a_block_missing_its_outer_brace_keeps_whole_arguments(
        block: str, arguments: dict[str, Any]) -> None:
    from stillroom.llm.tool_calls import call_arguments
    from stillroom.llm.tool_emulation import parse_tool_calls

    _, found = parse_tool_calls(f"<tool_call>\n{block}\n</tool_call>")
    assert found is not None and found[0]["function"]["name"] == "add"
    assert call_arguments(found[0]) == arguments


def test_broken_arguments_stay_raw_without_the_blocks_brace() -> None:
    from stillroom.llm.tool_emulation import parse_tool_calls

    _, found = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>')
    assert found is not None and found[0]["function"]["arguments"] == '{"a": 1,}'
    _, found = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1,}</tool_call>')
    assert found is not None and found[0]["function"]["arguments"] == '{"a": 1,}'


# -- call ids ---------------------------------------------------------------------------------


def test_tool_use_gives_call_ids_unique_across_the_conversation() -> None:
    from stillroom.llm.tool_calls import make_call

    def script(request: Any) -> Any:  # call_0 every turn, as the emulation and the echo do
        if sum(m["role"] == "tool" for m in request.messages) < 3:
            return answer("", calls(("add", {"a": 1, "b": 2})))
        return answer("two more calls made")

    earlier = [{"role": "user", "content": "before"},
               {"role": "assistant", "content": "", "tool_calls": [
                   make_call("add", {"a": 0, "b": 0}, "call_1_0")]},
               {"role": "tool", "tool_call_id": "call_1_0", "name": "add", "content": "0"},
               {"role": "user", "content": "again"}]
    client = FakeClient(script)
    out = run(faked(ToolUse, FakeTools()).process({"messages": earlier}, ctx(client)))
    new = out["messages"][len(earlier):]
    ids = [call["id"] for m in new if m["role"] == "assistant" for call in m.get("tool_calls") or []]
    assert ids == ["call_1_0x", "call_2_0"]  # call_1_0 was the input's
    assert [m["tool_call_id"] for m in new if m["role"] == "tool"] == ids
    assert [c["id"] for c in out["metadata"]["s"]["calls"]] == ids
    # What the model was sent on the last turn carries the same ids.
    sent = client.requests[-1].messages
    assert [m["tool_call_id"] for m in sent if m["role"] == "tool"] == ["call_1_0", *ids]


def test_anthropic_call_without_id_and_its_result_name_the_same_id() -> None:
    from stillroom.llm.anthropic_backend import anthropic_messages
    from stillroom.llm.tool_calls import make_call

    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "content": "", "tool_calls": [
                    make_call("add", {"a": 1}, ""), make_call("add", {"a": 2}, "")]},
                {"role": "tool", "tool_call_id": "", "name": "add", "content": "1"},
                {"role": "tool", "tool_call_id": "", "name": "add", "content": "2"},
                {"role": "assistant", "content": "", "tool_calls": [make_call("add", {"a": 3}, "")]},
                {"role": "tool", "tool_call_id": "", "name": "add", "content": "3"}]
    out = anthropic_messages(messages)
    uses = [block["id"] for m in out if m["role"] == "assistant" for block in m["content"]]
    results = [block["tool_use_id"] for m in out if m["role"] == "user"
               and isinstance(m["content"], list) for block in m["content"]]
    assert uses == results and len(set(uses)) == 3 and all(uses)


# -- conversation text, structured answers ------------------------------------------------------


def test_an_assistant_turn_without_a_content_key_is_a_turn() -> None:
    from stillroom.data.row_text import answer_turn, transcript_text
    from stillroom.llm.tool_calls import make_call

    call = make_call("get_weather", {"city": "Paris"}, "call_0")
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [call]},  # no content key (OpenAI allows)
                {"role": "tool", "tool_call_id": "call_0", "content": "18 C"},
                {"role": "assistant", "content": "18 C."},
                {"role": "assistant", "tool_calls": [call]}]
    text = transcript_text(messages[:4])
    assert "Assistant: <tool_call>" in text and '"get_weather"' in text
    assert answer_turn(messages) == 4  # the last turn, though it has no content key
    assert answer_turn([{"note": "not a message"}, messages[1]]) == 1


def test_structured_answer_with_a_raw_newline_in_a_string_parses() -> None:
    from stillroom.llm.structured import parse_structured

    schema = {"type": "object", "properties": {"reason": {"type": "string"}},
              "required": ["reason"]}
    assert parse_structured('{"reason": "line one\nline two\ttab"}', schema) == {
        "reason": "line one\nline two\ttab"}
