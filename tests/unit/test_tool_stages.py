"""tool_queries, tool_use and tool_check with a scripted model and a fake tool set (the real
backends, sandbox and MCP server are in tests/integration/test_tool_stages.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from stillroom.generate.tool_check import ToolCheck
from stillroom.generate.tool_queries import ToolQueries
from stillroom.generate.tool_use import ToolsStage, ToolUse
from stillroom.llm.tool_calls import make_call, tools_text
from stillroom.llm.types import Completion, Request, RequestFailed
from stillroom.pipeline.stage import Dropped, RowFailure, StageContext
from stillroom.tools import ToolResult, ToolsConfig, ToolSet
from stillroom.verify.tool_checks import conversation_calls, conversation_figures

TOOLS = [
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                        "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
    {"type": "function", "function": {
        "name": "convert", "description": "Convert a length.",
        "parameters": {"type": "object", "properties": {
            "value": {"type": "number"}, "unit": {"enum": ["m", "ft"]}},
            "required": ["value", "unit"]}}},
    {"type": "function", "function": {
        "name": "divide", "description": "Divide a by b.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                        "b": {"type": "number"}}}}},
]


class FakeTools(ToolSet):
    """Runs add/convert/divide in process; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    async def tools(self) -> list[dict[str, Any]]:
        return TOOLS

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        self.calls.append((name, arguments))
        if name == "add":
            return ToolResult(json.dumps(arguments["a"] + arguments["b"]))
        if name == "divide":
            if arguments.get("b") == 0:
                return ToolResult.failed("ToolError", "ZeroDivisionError: division by zero")
            return ToolResult(json.dumps(arguments["a"] / arguments["b"]))
        return ToolResult.failed("UnknownTool", f"no tool named {name!r}")

    async def aclose(self) -> None:
        self.closed = True

    def identity(self) -> dict[str, Any]:
        return {"fake": True}


@dataclass
class FakeBackend:
    model: str = "scripted-model"
    supports_json_schema: bool = True


@dataclass
class FakeClient:
    """Answers each request with ``script(request)``: a Completion, or text."""

    script: Callable[[Request], Completion | str]
    backend: FakeBackend = field(default_factory=FakeBackend)
    requests: list[Request] = field(default_factory=list)

    async def generate(self, request: Request) -> Completion:
        self.requests.append(request)
        answer = self.script(request)
        if isinstance(answer, str):
            answer = Completion(text=answer, finish_reason="stop", model=self.backend.model)
        if request.params.json_schema is not None and answer.parsed is None:
            answer.parsed = json.loads(answer.text)  # the real client validates; enough here
        return answer


def faked(cls: type[ToolsStage], toolset: ToolSet, **options: Any) -> ToolsStage:
    """The stage with ``toolset`` in place of the one its ``tools:`` option would build."""

    class Faked(cls):  # type: ignore[valid-type, misc]
        def toolset(self) -> ToolSet:
            return toolset

        def tools_identity(self) -> dict[str, Any]:
            return toolset.identity()

    return Faked.model_construct(tools=ToolsConfig.model_construct(python="fake.py"), **options)


def ctx(client: FakeClient) -> StageContext:
    return StageContext("s", 7, {"default": client, "judge": client})  # type: ignore[dict-item]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def calls(*items: tuple[str, Any]) -> list[dict[str, Any]]:
    return [make_call(name, arguments, f"call_{i}") for i, (name, arguments) in enumerate(items)]


def answer(text: str = "", tool_calls: list[dict[str, Any]] | None = None,
           finish: str = "stop") -> Completion:
    return Completion(text=text, finish_reason=finish, model="scripted-model",
                      tool_calls=tool_calls)


# -- tool_queries ----------------------------------------------------------------------------


def test_tool_queries_one_row_per_query_with_tools_and_lineage() -> None:
    client = FakeClient(lambda r: json.dumps(
        {"queries": ["What is 2 plus 3?", "  what is 2   PLUS 3? ", "Convert 5 m to feet."]}))
    stage = faked(ToolQueries, FakeTools(), n=3)
    out = run(stage.process({"id": "seed-1", "topic": "maths"}, ctx(client)))

    kept = [row for row in out if not isinstance(row, Dropped)]
    dropped = [item for item in out if isinstance(item, Dropped)]
    assert [row["messages"] for row in kept] == [
        [{"role": "user", "content": "What is 2 plus 3?"}],
        [{"role": "user", "content": "Convert 5 m to feet."}]]
    assert len(dropped) == 1 and dropped[0].reason == "duplicate query (the same as query 0 of this row)"
    for row in kept:
        assert json.loads(row["tools"]) == TOOLS  # JSON text, the tools offered
        assert row["topic"] == "maths"
        entry = row["metadata"]["s"]
        assert entry["method"] == "tool_queries" and entry["parent_id"] == "seed-1"
        assert entry["template"].startswith("tool_queries.write@")
    assert len({row["id"] for row in kept}) == 2 and all(r["id"] != "seed-1" for r in kept)
    # The request showed the tools and asked for exactly n queries under a schema.
    request = client.requests[0]
    assert '"name": "convert"' in request.messages[1]["content"]
    schema = request.params.json_schema["properties"]["queries"]
    assert schema["minItems"] == schema["maxItems"] == 3


def test_tool_queries_drop_placeholders_and_copied_examples() -> None:
    client = FakeClient(lambda r: json.dumps(
        {"queries": ["<request 1>", "How many feet is 3 metres?", "Add 2 and 9 please."]}))
    stage = faked(ToolQueries, FakeTools(), n=3, examples=["How many feet is 3  metres?"])
    out = run(stage.process({"id": "s"}, ctx(client)))
    assert [item.reason for item in out if isinstance(item, Dropped)] == [
        "a placeholder, not a query", "copies an example query"]
    assert [r["messages"][0]["content"] for r in out if not isinstance(r, Dropped)] == [
        "Add 2 and 9 please."]
    assert "How many feet is 3  metres?" in client.requests[0].messages[1]["content"]


def test_tool_queries_rows_get_own_seed_and_tool_subset() -> None:
    client = FakeClient(lambda r: json.dumps({"queries": ["q"]}))
    stage = faked(ToolQueries, FakeTools(), n=1, tools_per_row=2)
    first = run(stage.process({"id": "a"}, ctx(client)))[0]
    again = run(stage.process({"id": "a"}, ctx(client)))[0]
    other = run(stage.process({"id": "b"}, ctx(client)))[0]
    assert len(json.loads(first["tools"])) == 2
    assert first["tools"] == again["tools"]  # seeded by the row: the same on a rerun
    seeds = [request.params.seed for request in client.requests]
    assert seeds[0] == seeds[1] != seeds[2]
    assert other["metadata"]["s"]["tool_names"] == [t["function"]["name"]
                                                   for t in json.loads(other["tools"])]


def test_tool_queries_reads_the_row_tools_column_and_a_plain_list() -> None:
    client = FakeClient(lambda r: "Here you go:\n1. Add 4 and 9.\n2. What is 7 + 1?")
    client.backend.supports_json_schema = False
    stage = ToolQueries(n=2)  # no tool set: the row says which tools
    row = {"id": "x", "tools": tools_text(TOOLS[:1])}
    out = run(stage.process(row, ctx(client)))
    assert [r["messages"][0]["content"] for r in out] == ["Add 4 and 9.", "What is 7 + 1?"]
    assert json.loads(out[0]["tools"]) == TOOLS[:1]
    assert stage.check_row({"id": "y"}) is not None  # neither a column nor a tool set
    assert "not JSON" in stage.check_row({"id": "y", "tools": "[{"})


# -- tool_use --------------------------------------------------------------------------------


def two_turns(request: Request) -> Completion:
    last = request.messages[-1]
    if last["role"] == "tool":
        return answer(f"The answer is {last['content']}.")
    return answer("", calls(("add", {"a": 2, "b": 3})))


def test_tool_use_runs_calls_and_records_every_turn() -> None:
    tools = FakeTools()
    client = FakeClient(two_turns)
    stage = faked(ToolUse, tools)
    row = {"id": 1, "messages": [{"role": "user", "content": "2+3?"}], "tools": tools_text(TOOLS)}
    out = run(stage.process(row, ctx(client)))

    assert out["messages"] == [
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "", "tool_calls": [
            make_call("add", {"a": 2, "b": 3}, "call_0_0")]},  # ids unique in the conversation
        {"role": "tool", "tool_call_id": "call_0_0", "name": "add", "content": "5"},
        {"role": "assistant", "content": "The answer is 5."},
    ]
    assert tools.calls == [("add", {"a": 2, "b": 3})]
    entry = out["metadata"]["s"]
    assert entry["turns"] == 2
    assert entry["calls"] == [{"turn": 0, "id": "call_0_0", "name": "add", "status": "ok"}]
    assert json.loads(out["tools"]) == TOOLS and out["id"] == 1  # the input's id, unchanged
    # Every request offered the tools; the second one carried the tool's result.
    assert all(r.params.tools == TOOLS for r in client.requests)
    assert client.requests[1].messages[-1]["role"] == "tool"


def test_tool_use_answers_bad_calls_with_errors_and_goes_on() -> None:
    tools = FakeTools()

    def script(request: Request) -> Completion:
        if request.messages[-1]["role"] == "tool":
            return answer("done")
        bad = make_call("add", "{not json", "call_0")
        return answer("", [bad, make_call("shell", {}, "call_1"),
                           make_call("divide", {"a": 1, "b": 0}, "call_2")])

    out = run(faked(ToolUse, tools).process(
        {"prompt": "go", "tools": tools_text(TOOLS)}, ctx(FakeClient(script))))
    results = [m for m in out["messages"] if m["role"] == "tool"]
    assert results[0]["content"].startswith("InvalidArguments: arguments are not JSON")
    assert results[1]["content"].startswith("UnknownTool: 'shell' is not one of the offered")
    assert results[2]["content"] == "ToolError: ZeroDivisionError: division by zero"
    assert [c["status"] for c in out["metadata"]["s"]["calls"]] == [
        "InvalidArguments", "UnknownTool", "ToolError"]
    assert tools.calls == [("divide", {"a": 1, "b": 0})]  # only the well-formed offered call ran
    assert "prompt" not in out and out["messages"][0] == {"role": "user", "content": "go"}


def test_tool_use_drops_a_row_at_the_turn_limit_with_its_conversation() -> None:
    client = FakeClient(lambda r: answer("", calls(("add", {"a": 1, "b": 1}))))
    out = run(faked(ToolUse, FakeTools(), max_turns=3).process(
        {"id": "r", "messages": [{"role": "user", "content": "loop"}]}, ctx(client)))
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], Dropped)
    assert out[0].reason.startswith("turn limit")
    assert sum(m["role"] == "assistant" for m in out[0].row["messages"]) == 3
    assert len(client.requests) == 3


def test_tool_use_stop_after_calls_keeps_the_calls_and_results_as_the_answer() -> None:
    client = FakeClient(two_turns)
    out = run(faked(ToolUse, FakeTools(), stop_after_calls=True, max_turns=1).process(
        {"messages": [{"role": "user", "content": "2+3?"}]}, ctx(client)))
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool"]
    assert out["messages"][2]["content"] == "5" and len(client.requests) == 1


@pytest.mark.parametrize(("final", "reason"), [
    (answer("   "), "empty final answer"),
    (answer("<tool_response>\n5\n</tool_response>"),
     "final answer holds tool-call markup (<tool_call>/<tool_response>), not an answer"),
    (answer("half an ans", finish="length"), "final answer cut off at max_tokens 512"),
])
def test_tool_use_drops_an_unusable_final_answer(final: Completion, reason: str) -> None:
    out = run(faked(ToolUse, FakeTools()).process(
        {"messages": [{"role": "user", "content": "x"}]}, ctx(FakeClient(lambda r: final))))
    assert isinstance(out[0], Dropped) and out[0].reason == reason


def test_tool_use_lets_a_failed_request_fail_the_whole_row() -> None:
    def script(request: Request) -> Completion:
        if request.messages[-1]["role"] == "tool":
            raise RequestFailed(RuntimeError("server gone"), attempts=3)
        return answer("", calls(("add", {"a": 1, "b": 2})))

    with pytest.raises(RequestFailed):
        run(faked(ToolUse, FakeTools()).process(
            {"messages": [{"role": "user", "content": "x"}]}, ctx(FakeClient(script))))


def test_tool_use_named_tool_choice_on_the_first_turn_only() -> None:
    client = FakeClient(two_turns)
    run(faked(ToolUse, FakeTools(), tool_choice="add").process(
        {"messages": [{"role": "user", "content": "x"}]}, ctx(client)))
    assert client.requests[0].params.tool_choice == {"type": "function", "function": {"name": "add"}}
    assert client.requests[1].params.tool_choice == "auto"
    with pytest.raises(RowFailure, match="not one of the row's tools"):
        run(faked(ToolUse, FakeTools(), tool_choice="nope").process(
            {"messages": [{"role": "user", "content": "x"}]}, ctx(client)))


def test_stages_with_one_tools_option_share_one_tool_set_until_closed(tmp_path: Any) -> None:
    (tmp_path / "t.py").write_text('def ping(x: int) -> int:\n    """Echo x."""\n    return x\n')
    config = {"python": str(tmp_path / "t.py")}
    use, check = ToolUse(tools=config), ToolCheck(tools=config, semantic=False)
    other = ToolUse(tools={**config, "timeout": 3})

    async def scenario() -> None:
        shared = use.toolset()
        assert check.toolset() is shared and other.toolset() is not shared
        await use.aclose()
        assert check.toolset() is not shared  # closed: the next use builds a new one

    run(scenario())
    first: list[ToolSet] = []
    run(_remember(use, first))
    run(_remember(use, first))
    assert first[0] is not first[1]  # each event loop gets its own


async def _remember(stage: ToolsStage, into: list[ToolSet]) -> None:
    into.append(stage.toolset())


# -- tool_check ------------------------------------------------------------------------------


def conversation(*turn_calls: list[dict[str, Any]], results: list[list[str]] | None = None,
                 final: str | None = "It is 5.") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is 2 + 3?"}]
    for index, group in enumerate(turn_calls):
        messages.append({"role": "assistant", "content": "", "tool_calls": group})
        for call, content in zip(group, (results or [])[index] if results else [], strict=False):
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "name": call["function"]["name"], "content": content})
    if final is not None:
        messages.append({"role": "assistant", "content": final})
    return messages


def checked_row(messages: list[dict[str, Any]], statuses: list[str] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": "c", "messages": messages, "tools": tools_text(TOOLS)}
    if statuses is not None:
        row["metadata"] = {"use": {"method": "tool_use", "turns": 2, "calls": [
            {"turn": 0, "id": f"call_{i}", "name": "x", "status": s}
            for i, s in enumerate(statuses)]}}
    return row


def yes(request: Request) -> str:
    return json.dumps({"reason": "add(2, 3) gives 5, which answers it.", "verdict": "yes"})


def test_tool_check_passes_a_good_conversation_through_all_three_checks() -> None:
    client = FakeClient(yes)
    row = checked_row(conversation(calls(("add", {"a": 2, "b": 3})), results=[["5"]]), ["ok"])
    out = run(faked(ToolCheck, FakeTools()).process(row, ctx(client)))
    assert (out["format_ok"], out["execution_ok"], out["semantic_ok"]) == (True, True, True)
    assert out["tool_checks_passed"] and out["tool_check_reason"] is None
    prompt = client.requests[0].messages[1]["content"]
    assert 'add({"a": 2, "b": 3})' in prompt and "result: 5" in prompt and "It is 5." in prompt
    assert client.requests[0].params.json_schema["properties"]["verdict"] == {"enum": ["yes", "no"]}


@pytest.mark.parametrize(("bad", "reason"), [
    (make_call("add", {"a": 2, "b": "3"}, "call_1"),
     "format check: call 2 (add): arguments at $.b: '3' is not of type 'integer'"),
    (make_call("convert", {"value": 1, "unit": "parsec"}, "call_1"),
     "format check: call 2 (convert): arguments at $.unit: 'parsec' is not one of ['m', 'ft']"),
    (make_call("add", "[1, 2]", "call_1"),
     "format check: call 2 (add): arguments are JSON list, not an object"),
    (make_call("shell", {}, "call_1"),
     "format check: call 2 (shell): 'shell' is not an offered tool (add, convert, divide)"),
])
def test_tool_check_format_names_the_call(bad: dict[str, Any], reason: str) -> None:
    client = FakeClient(yes)
    good = make_call("add", {"a": 2, "b": 3}, "call_0")
    row = checked_row(conversation([good, bad], results=[["5", "x"]]), ["ok", "ok"])
    out = run(faked(ToolCheck, FakeTools()).process(row, ctx(client)))
    assert isinstance(out[0], Dropped) and out[0].reason == reason
    assert out[0].row["format_ok"] is False and out[0].row["execution_ok"] is None
    assert client.requests == []  # a failed row goes no further: no judge asked


def test_tool_check_flag_keeps_the_row_and_a_missing_call_fails_format() -> None:
    row = checked_row(conversation(final="I just know: 5."))
    out = run(faked(ToolCheck, FakeTools(), on_fail="flag").process(row, ctx(FakeClient(yes))))
    assert isinstance(out, dict) and out["format_ok"] is False
    assert out["tool_check_reason"] == "format check: no tool call in the conversation"
    assert out["tool_checks_passed"] is False
    lenient = run(faked(ToolCheck, FakeTools(), require_calls=False, semantic=False).process(
        row, ctx(FakeClient(yes))))
    assert lenient["format_ok"] is True and lenient["execution_ok"] is True


def test_tool_check_execution_reads_tool_use_outcomes() -> None:
    tools = FakeTools()
    messages = conversation(calls(("divide", {"a": 1, "b": 0})),
                            results=[["ToolError: ZeroDivisionError: division by zero"]])
    out = run(faked(ToolCheck, tools).process(checked_row(messages, ["ToolError"]),
                                              ctx(FakeClient(yes))))
    assert out[0].reason == ("execution check: call 1 (divide): ToolError: ZeroDivisionError: "
                             "division by zero")
    assert out[0].row["execution_ok"] is False and out[0].row["semantic_ok"] is None
    assert tools.calls == []  # the outcome was recorded: nothing run again


def test_tool_check_runs_calls_without_a_recorded_outcome() -> None:
    tools = FakeTools()
    client = FakeClient(yes)
    messages = conversation(calls(("add", {"a": 2, "b": 3}), ("divide", {"a": 6, "b": 3})),
                            final=None)  # calls only, as in APIGen's single-turn data
    out = run(faked(ToolCheck, tools).process(checked_row(messages), ctx(client)))
    assert tools.calls == [("add", {"a": 2, "b": 3}), ("divide", {"a": 6, "b": 3})]
    assert [item["content"] for item in out["execution_results"]] == ["5", "2.0"]
    assert out["execution_ok"] is True and "result: 2.0" in client.requests[0].messages[1]["content"]
    failing = conversation(calls(("divide", {"a": 6, "b": 0})), final=None)
    dropped = run(faked(ToolCheck, tools).process(checked_row(failing), ctx(client)))
    assert dropped[0].reason.startswith("execution check: call 1 (divide): ToolError: ZeroDivision")


def test_tool_check_semantic_no_drops_with_the_judges_reason() -> None:
    client = FakeClient(lambda r: json.dumps({"reason": "It added instead of dividing.",
                                              "verdict": "no"}))
    row = checked_row(conversation(calls(("add", {"a": 2, "b": 3})), results=[["5"]]), ["ok"])
    out = run(faked(ToolCheck, FakeTools()).process(row, ctx(client)))
    assert out[0].reason == "semantic check: the judge said no: It added instead of dividing."
    assert out[0].row["semantic_ok"] is False and out[0].row["semantic_reason"]


def test_tool_check_semantic_reads_a_plain_verdict() -> None:
    client = FakeClient(lambda r: "The call fits the request.\nVerdict: yes")
    client.backend.supports_json_schema = False
    row = checked_row(conversation(calls(("add", {"a": 2, "b": 3})), results=[["5"]]), ["ok"])
    out = run(faked(ToolCheck, FakeTools()).process(row, ctx(client)))
    assert out["semantic_ok"] is True and out["semantic_reason"] == "The call fits the request."


def test_conversation_calls_match_results_by_id_then_position() -> None:
    first = calls(("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2}))
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": first},
                {"role": "tool", "tool_call_id": "call_1", "name": "add", "content": "4"},
                {"role": "tool", "tool_call_id": "call_0", "name": "add", "content": "2"},
                {"role": "assistant", "content": "", "tool_calls": calls(("add", {"a": 0, "b": 0}))},
                {"role": "tool", "tool_call_id": "", "name": "add", "content": "0"},
                {"role": "assistant", "content": "", "tool_calls": calls(("add", {"a": 5, "b": 5}))}]
    assert [result for _, result in conversation_calls(messages)] == ["2", "4", "0", None]


def test_summaries_report_rates_and_turns() -> None:
    stage = ToolCheck(semantic=True)
    rows = [
        {"format_ok": True, "execution_ok": True, "semantic_ok": True,
         "metadata": {"u": {"method": "tool_use", "turns": 2, "calls": [{"status": "ok"}]},
                      "c": {"method": "tool_check", "calls": 1, "invalid_calls": 0}}},
        {"format_ok": True, "execution_ok": False, "semantic_ok": None,
         "metadata": {"u": {"method": "tool_use", "turns": 3,
                            "calls": [{"status": "ok"}, {"status": "ToolError"}]},
                      "c": {"method": "tool_check", "calls": 2, "invalid_calls": 0}}},
        {"format_ok": False, "execution_ok": None, "semantic_ok": None,
         "metadata": {"u": {"method": "tool_use", "turns": 1, "calls": []},
                      "c": {"method": "tool_check", "calls": 1, "invalid_calls": 1}}},
    ]
    figures = stage.summarize(rows)
    assert figures["format validity rate"] == pytest.approx(2 / 3)
    assert figures["execution pass rate"] == pytest.approx(1 / 2)
    assert figures["semantic pass rate"] == 1.0
    assert figures["assistant turns per conversation"] == 2.0
    assert figures["calls checked"] == 4 and figures["calls well-formed"] == 3
    assert stage.result_line(figures) == (
        "tool_check: format 2/3 (66.7%), execution 1/2 (50.0%), semantic 1/1 (100.0%); "
        "2.00 assistant turns per conversation")
    assert conversation_figures(rows)["calls ok"] == 2


def test_tool_check_needs_a_check_and_a_semantic_backend_only_when_judging() -> None:
    with pytest.raises(ValueError, match="all off"):
        ToolCheck(format=False, execution=False, semantic=False)
    assert ToolCheck(semantic=False).backend_names() == set()
    assert ToolCheck(backend="judge").backend_names() == {"judge"}



# -- configuration ---------------------------------------------------------------------------


def test_a_bad_tools_option_is_a_config_error_naming_the_stage_and_key(tmp_path: Any) -> None:
    from stillroom.errors import ConfigError
    from stillroom.pipeline.config import parse_pipeline_text

    text = "stages:\n  - type: tool_use\n    tools: {python: missing.py}\n"
    with pytest.raises(ConfigError) as caught:
        parse_pipeline_text(text, "p.yaml", base_dir=tmp_path)
    message = str(caught.value)
    assert "p.yaml:3" in message and "stages[0].tools" in message
    assert "tools.python: no such file" in message and "missing.py" in message
    with pytest.raises(ConfigError, match="tool_use runs the calls: give `tools:`"):
        parse_pipeline_text("stages:\n  - type: tool_use\n", "p.yaml", base_dir=tmp_path)


def test_the_pipeline_file_folder_resolves_the_tools_file(tmp_path: Any) -> None:
    from stillroom.pipeline.config import parse_pipeline_text

    (tmp_path / "t.py").write_text('def ping(x: int) -> int:\n    """Echo x."""\n    return x\n')
    model, _ = parse_pipeline_text(
        "stages:\n  - type: tool_queries\n    tools: {python: t.py}\n"
        "  - type: tool_check\n    semantic: false\n", "p.yaml", base_dir=tmp_path)
    stage = model.stages[0]  # type: ignore[attr-defined]
    assert stage.identity()["toolset"] == stage.tools.build(tmp_path).identity()
    assert run(stage.offered_tools({"id": 1}))[0]["function"]["name"] == "ping"


def test_tool_queries_reports_the_diversity_of_the_queries_it_wrote() -> None:
    """Its rows hold one user turn each: the diversity guard reads that role, not the (absent)
    assistant answer a plain `messages` column means."""
    from stillroom.report.diversity import column_spec

    columns = ToolQueries(n=2).generated_columns()
    assert columns == ["messages:user"]
    assert column_spec(columns[0]) == ("messages", "user")
