"""Tools in every backend without a server: the emulation (prompting and parsing) the client
applies to backends without a tool API, the OpenAI body and answer, and Anthropic's conversion
both ways. The same paths against real servers and the embedded model are in
tests/integration/test_tool_calling_servers.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.llm import LLMClient
from stillroom.llm.anthropic_backend import AnthropicConfig, messages_body, parse_message
from stillroom.llm.cache import RequestCache
from stillroom.llm.openai_compat import chat_body, parse_chat_response
from stillroom.llm.tool_calls import TOOL_CALL_START, call_arguments, make_call
from stillroom.llm.tool_emulation import (
    call_schema,
    emulated_request,
    parse_tool_calls,
    read_answer,
)
from stillroom.llm.types import BackendError, Completion, GenerationParams, Request, RequestFailed
from stillroom.testing.echo_server import _answer, _anthropic_answer
from tests.fakes import ScriptedBackend

WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}
ADD: dict[str, Any] = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]


def ask(*messages: dict[str, Any], **params: Any) -> Request:
    return Request(messages=list(messages), params=GenerationParams(tools=TOOLS, **params))


USER: dict[str, Any] = {"role": "user", "content": "Add 17 and 23."}
CALLED: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [
    make_call("add", {"a": 17, "b": 23}, "call_0"), make_call("get_weather",
                                                              {"city": "Oslo"}, "call_1")]}
RESULTS: list[dict[str, Any]] = [{"role": "tool", "tool_call_id": "call_0", "name": "add", "content": "40"},
           {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "rain"}]


# -- the emulation's parser -----------------------------------------------------------------------


def test_several_blocks_become_calls_and_the_text_around_them_the_content() -> None:
    text = ('Let me check.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
            '</tool_call>\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
            '</tool_call>\nDone.')
    content, calls = parse_tool_calls(text)
    assert content == "Let me check.\nDone."
    assert calls is not None
    assert [call["id"] for call in calls] == ["call_0", "call_1"]
    assert [call["function"]["name"] for call in calls] == ["add", "get_weather"]
    assert call_arguments(calls[0]) == {"a": 1, "b": 2}
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Oslo"}


def test_a_block_whose_json_does_not_parse_is_still_a_call_with_its_raw_arguments() -> None:
    content, calls = parse_tool_calls('<tool_call>\n{"name": "add", "arguments": {"a": 1,}}\n'
                                      "</tool_call>")
    assert content == ""
    assert calls is not None and calls[0]["function"]["name"] == "add"
    assert calls[0]["function"]["arguments"] == '{"a": 1,}'
    with pytest.raises(ValueError, match="not JSON"):
        call_arguments(calls[0])
    # No name at all, and a block the model never closed (cut at max_tokens).
    _, calls = parse_tool_calls("ok <tool_call> add(1, 2)")
    assert calls == [make_call("", "add(1, 2)", "call_0")]


def test_text_without_blocks_has_no_calls() -> None:
    assert parse_tool_calls("Paris is sunny.") == ("Paris is sunny.", None)


# -- what a backend without a tool API is asked ------------------------------------------------


def test_auto_describes_the_tools_in_the_system_turn_and_sends_no_tools() -> None:
    sent = emulated_request(ask({"role": "system", "content": "Be brief."}, USER, CALLED,
                                *RESULTS, seed=3))
    assert sent.params.tools is None and sent.params.tool_choice is None
    assert sent.params.json_schema is None and sent.params.seed == 3
    assert sent.messages is not None
    system, user, assistant, results = sent.messages
    assert system["content"].startswith("Be brief.\n\n") and '"get_weather"' in system["content"]
    assert user == USER
    assert assistant["content"].count(TOOL_CALL_START) == 2 and "tool_calls" not in assistant
    assert results["role"] == "user" and "40" in results["content"] and "rain" in results["content"]


def test_none_offers_no_tools_but_still_renders_the_conversation_as_plain_turns() -> None:
    sent = emulated_request(ask(USER, CALLED, *RESULTS, tool_choice="none"))
    assert sent.messages is not None
    assert [m["role"] for m in sent.messages] == ["user", "assistant", "user"]
    assert not any("<tools>" in m["content"] for m in sent.messages)
    done = read_answer(Completion(text='<tool_call>{"name": "add"}</tool_call>'),
                       ask(USER, tool_choice="none"))
    assert done.tool_calls is None  # not offered, not parsed


def test_required_constrains_to_one_call_of_any_tool_and_reads_it() -> None:
    sent = emulated_request(ask(USER, tool_choice="required"))
    assert sent.params.json_schema == call_schema(TOOLS)
    branches = sent.params.json_schema["anyOf"]
    assert [b["properties"]["name"]["const"] for b in branches] == ["get_weather", "add"]
    assert branches[1]["properties"]["arguments"] == ADD["function"]["parameters"]
    done = read_answer(Completion(text='{"name": "add", "arguments": {"a": 17, "b": 23}}'),
                       ask(USER, tool_choice="required"))
    assert done.text == "" and done.tool_calls == [make_call("add", {"a": 17, "b": 23}, "call_0")]


def test_a_named_function_constrains_to_its_parameters() -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    sent = emulated_request(ask(USER, tool_choice=choice))
    assert sent.params.json_schema == WEATHER["function"]["parameters"]
    done = read_answer(Completion(text=' {"city": "Oslo", "unit": "celsius"} '),
                       ask(USER, tool_choice=choice))
    assert done.tool_calls == [make_call("get_weather", '{"city": "Oslo", "unit": "celsius"}',
                                         "call_0")]


@pytest.mark.parametrize(("request_", "reason"), [
    (ask(USER, tool_choice={"type": "function", "function": {"name": "nope"}}), "not among"),
    (ask(USER, tool_choice="sometimes"), "is not one of"),
    (Request(prompt="hi", params=GenerationParams(tools=TOOLS)), "raw `prompt`"),
    (Request(messages=[USER], params=GenerationParams(tools=[{"type": "web"}])), "needs a non-empty"),
])
def test_requests_that_cannot_be_asked_are_refused_without_retry(request_: Request,
                                                                 reason: str) -> None:
    with pytest.raises(BackendError, match=reason) as caught:
        emulated_request(request_)
    assert not caught.value.retryable


# -- the client applies it in one place, and caches the parsed answer -------------------------


class ToolWriter(ScriptedBackend):
    def __init__(self) -> None:
        super().__init__(lambda request, attempt: (
            'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 17, "b": 23}}\n</tool_call>'))


def test_the_client_emulates_tools_and_a_cache_replay_gives_identical_calls(tmp_path: Path) -> None:
    backend = ToolWriter()
    request = ask(USER)

    async def twice() -> tuple[Completion, Completion]:
        cache = RequestCache(tmp_path / "cache.sqlite")
        client = LLMClient(backend, cache=cache, max_retries=0)
        first = await client.generate(request)
        second = await LLMClient(backend, cache=cache).generate(request)
        return first, second

    first, second = asyncio.run(twice())
    assert len(backend.calls) == 1 and backend.calls[0].params.tools is None
    assert first.tool_calls == [make_call("add", {"a": 17, "b": 23}, "call_0")]
    assert first.text == "Sure."
    assert second.cached and second.tool_calls == first.tool_calls and second.text == first.text


def test_a_native_backend_gets_the_request_as_it_is_and_calls_without_text_are_an_answer(
    tmp_path: Path,
) -> None:
    class Native(ScriptedBackend):
        supports_tools = True

        async def generate(self, request: Request) -> Completion:
            self.calls.append(request)
            return Completion(text="", tool_calls=[make_call("add", "{}", "x")])

    backend = Native()
    request = ask(USER, CALLED, *RESULTS)

    async def twice() -> Completion:
        cache = RequestCache(tmp_path / "cache.sqlite")
        await LLMClient(backend, cache=cache).generate(request)
        return await LLMClient(backend, cache=cache).generate(request)

    replay = asyncio.run(twice())
    assert backend.calls == [request]  # sent as asked, cached (an answer), served again
    assert replay.cached and replay.tool_calls == [make_call("add", "{}", "x")]


def test_a_refused_tool_request_fails_at_once_with_its_reason() -> None:
    backend = ToolWriter()
    client = LLMClient(backend, max_retries=3, retry_base_delay=0)
    with pytest.raises(RequestFailed, match="not among") as caught:
        asyncio.run(client.generate(
            ask(USER, tool_choice={"type": "function", "function": {"name": "nope"}})))
    assert caught.value.attempts == 1 and not backend.calls


# -- OpenAI-compatible body and answer ----------------------------------------------------------


def test_openai_body_carries_tools_and_the_conversation_in_the_wire_shape() -> None:
    called = {**CALLED, "tool_calls": [{**CALLED["tool_calls"][0], "function": {
        "name": "add", "arguments": {"a": 17, "b": 23}}}]}  # a dataset's object arguments
    body = chat_body("m", ask(USER, called, RESULTS[0], tool_choice="required"))
    assert body["tools"] == TOOLS and body["tool_choice"] == "required"
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"a":17,"b":23}'
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "call_0", "content": "40"}
    assert "tools" not in chat_body("m", Request(messages=[USER]))
    with pytest.raises(BackendError, match="raw `prompt`"):
        chat_body("m", Request(prompt="hi", params=GenerationParams(tools=TOOLS)))


def test_openai_answer_calls_are_read_into_the_row_shape() -> None:
    data: dict[str, Any] = {"choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "abc", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}},
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        ]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
    completion = parse_chat_response(data, "m")
    assert completion.text == "" and completion.finish_reason == "tool_calls"
    assert completion.tool_calls == [make_call("add", '{"a":1}', "abc"),
                                     make_call("get_weather", '{"city":"Oslo"}', "call_1")]
    assert completion.to_record()["tool_calls"] == completion.tool_calls
    plain = parse_chat_response({"choices": [{"message": {"content": "hi"}}]}, "m")
    assert plain.tool_calls is None and "tool_calls" not in plain.to_record()


def test_openai_answer_with_a_nameless_call_is_malformed() -> None:
    data: dict[str, Any] = {"choices": [{"message": {"content": None, "tool_calls": [{"function": {}}]}}]}
    with pytest.raises(BackendError, match=r"tool_calls\[0\].function.name"):
        parse_chat_response(data, "m")


# -- Anthropic, both ways --------------------------------------------------------------------------


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "add"}}, {"type": "tool", "name": "add"}),
])
def test_anthropic_tools_and_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    body = messages_body("claude", ask(USER, tool_choice=choice), 1024)
    assert body["tool_choice"] == expected
    assert body["tools"][1] == {"name": "add", "description": "Add two integers",
                                "input_schema": ADD["function"]["parameters"]}
    assert "tool_choice" not in messages_body("claude", ask(USER), 1024)


def test_anthropic_request_turns_calls_into_tool_use_and_merges_tool_results() -> None:
    called = {**CALLED, "content": "Working on it."}
    body = messages_body("claude", ask({"role": "system", "content": "S"}, USER, called,
                                       *RESULTS, {"role": "user", "content": "Thanks"}), 1024)
    assert body["system"] == "S"
    user, assistant, results, thanks = body["messages"]
    assert user == USER
    assert assistant == {"role": "assistant", "content": [
        {"type": "text", "text": "Working on it."},
        {"type": "tool_use", "id": "call_0", "name": "add", "input": {"a": 17, "b": 23}},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}]}
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_0", "content": "40"},
        {"type": "tool_result", "tool_use_id": "call_1", "content": "rain"}]}
    assert thanks == {"role": "user", "content": "Thanks"}
    bad = {"role": "assistant", "content": "", "tool_calls": [make_call("add", "{oops", "c")]}
    with pytest.raises(BackendError, match=r"messages\[1\].tool_calls\[0\]"):
        messages_body("claude", ask(USER, bad), 1024)


def test_anthropic_answer_tool_use_blocks_become_calls() -> None:
    message = {"model": "claude", "stop_reason": "tool_use", "usage": {"output_tokens": 9},
               "content": [{"type": "text", "text": "Let me add."},
                           {"type": "tool_use", "id": "toolu_1", "name": "add",
                            "input": {"a": 1, "b": 2}}]}
    completion = parse_message(message, "claude")
    # finish_reason stays "tool_use" (tests/unit/test_anthropic_backend.py pins it); the calls
    # are what says that the model called.
    assert completion.text == "Let me add." and completion.finish_reason == "tool_use"
    assert completion.tool_calls == [make_call("add", {"a": 1, "b": 2}, "toolu_1")]
    bad = {**message, "content": [{"type": "tool_use", "id": "t", "name": "add", "input": "x"}]}
    with pytest.raises(BackendError, match=r"content\[0\].input"):
        parse_message(bad, "claude")


# -- the echo server's calls --------------------------------------------------------------------


def echo(text: str, **body: Any) -> dict[str, Any]:
    request = {"model": "m", "messages": [{"role": "user", "content": text}], "tools": TOOLS}
    return _answer({**request, **body}, 0)["choices"][0]


def test_echo_calls_the_first_or_named_tool_with_a_minimal_instance() -> None:
    call = echo("weather?")["message"]["tool_calls"][0]["function"]
    assert call == {"name": "get_weather", "arguments": '{"city": "echo", "unit": "celsius"}'}
    choice = echo("Add 17 and 2.5", tool_choice={"type": "function", "function": {"name": "add"}})
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "a": 17, "b": 2}  # an integer parameter takes the number's integer part


def test_echo_hooks_and_tool_turns() -> None:
    bad = echo("ECHO_BAD_ARGS")["message"]["tool_calls"][0]["function"]["arguments"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    assert echo("ECHO_UNKNOWN_TOOL")["message"]["tool_calls"][0]["function"]["name"] == (
        "echo_unknown_tool")
    assert echo("ECHO_NO_CALL hi")["message"] == {"role": "assistant",
                                                  "content": "echo: ECHO_NO_CALL hi"}
    assert "tool_calls" not in echo("hi", tool_choice="none")["message"]
    turn = _answer({"messages": [USER, CALLED, RESULTS[0]], "tools": TOOLS}, 0)["choices"][0]
    assert turn["message"]["content"] == "echo: add returned 40"
    anthropic = _anthropic_answer({"messages": [{"role": "user", "content": "Add 1 and 2"}],
                                   "tools": [{"name": "add", "input_schema":
                                              ADD["function"]["parameters"]}]}, 0)
    assert anthropic["stop_reason"] == "tool_use"
    assert anthropic["content"][0]["input"] == {"a": 1, "b": 2}


def test_anthropic_thinking_allows_only_auto_or_none_tool_choice() -> None:
    config = AnthropicConfig(model="claude", thinking_budget=1024, max_tokens_default=4096)
    config.check_params(GenerationParams(tools=TOOLS, tool_choice="auto"))
    with pytest.raises(ConfigError, match="only 'auto' and 'none'"):
        config.check_params(GenerationParams(tools=TOOLS, tool_choice="required"))
    with pytest.raises(BackendError, match="only 'auto' and 'none'"):
        messages_body("claude", ask(USER, tool_choice="required"), 4096, thinking_budget=1024)
