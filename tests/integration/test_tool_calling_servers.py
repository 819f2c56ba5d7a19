"""Tool calls through real local components: stillroom's echo server (OpenAI and Anthropic shapes)
through the openai and anthropic backends, llama-cpp-python's server with its
``chatml-function-calling`` chat format, and the embedded model in process through the client's
emulation (stillroom.llm.tool_emulation)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest

from stillroom.llm import AnthropicConfig, LLMClient, OpenAIConfig
from stillroom.llm.cache import RequestCache
from stillroom.llm.llamacpp import LlamaCppBackend, embedded_model_path
from stillroom.llm.tool_calls import assistant_turn, call_arguments, tool_turn
from stillroom.llm.tool_emulation import emulated_request, parse_tool_calls
from stillroom.llm.types import Completion, GenerationParams, Request
from tests.servers import free_port, running

WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ADD: dict[str, Any] = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
SYSTEM: dict[str, Any] = {"role": "system", "content": "You are a helpful assistant."}
ADD_QUESTION: dict[str, Any] = {"role": "user", "content": "Add 17 and 23."}


def ask(*messages: dict[str, Any], **params: Any) -> Request:
    return Request(messages=list(messages),
                   params=GenerationParams(tools=TOOLS, temperature=0, max_tokens=80, **params))


def sent_bodies(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["body"] for line in log.read_text().splitlines()]


# -- the echo server through the openai backend -------------------------------------------------


def test_echo_calls_are_parsed_cached_and_answered_after_the_tool_turn(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    url, log = echo_server()
    request = ask(ADD_QUESTION, tool_choice={"type": "function", "function": {"name": "add"}})

    async def conversation() -> tuple[Completion, Completion, Completion]:
        cache = RequestCache(tmp_path / "cache.sqlite")
        client = LLMClient.from_config(OpenAIConfig(model="echo", base_url=url), cache=cache)
        first = await client.generate(request)
        await client.aclose()
        replay_client = LLMClient.from_config(OpenAIConfig(model="echo", base_url=url),
                                              cache=cache)
        replay = await replay_client.generate(request)
        assert first.tool_calls is not None
        # The conversation goes on: the call and the tool's answer are sent back.
        turns = [ADD_QUESTION, assistant_turn(first.text, first.tool_calls),
                 tool_turn(first.tool_calls[0], "40")]
        answer = await replay_client.generate(ask(*turns))
        await replay_client.aclose()
        return first, replay, answer

    first, replay, answer = asyncio.run(conversation())
    assert first.text == "" and first.finish_reason == "tool_calls"
    assert first.tool_calls == [{"id": "call_echo_0", "type": "function", "function": {
        "name": "add", "arguments": '{"a": 17, "b": 23}'}}]
    assert replay.cached and replay.tool_calls == first.tool_calls and replay.text == first.text
    assert answer.text == "echo: add returned 40" and answer.tool_calls is None
    bodies = sent_bodies(log)
    assert len(bodies) == 2  # the replay was not sent
    assert bodies[0]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert bodies[1]["tool_choice"] == "auto" and bodies[1]["tools"] == TOOLS
    assert bodies[1]["messages"][1]["tool_calls"] == first.tool_calls
    assert bodies[1]["messages"][2] == {"role": "tool", "tool_call_id": "call_echo_0",
                                        "content": "40"}


@pytest.mark.parametrize("client_kind", ["aiohttp", "sdk"])
def test_echo_hooks_reach_the_row_shape_for_a_format_check(
    echo_server: Callable[..., tuple[str, Path]], client_kind: Literal["aiohttp", "sdk"],
) -> None:
    url, _ = echo_server()

    async def hooks() -> list[Completion]:
        client = LLMClient.from_config(OpenAIConfig(model="echo", base_url=url,
                                                    client=client_kind))
        try:
            return [await client.generate(ask({"role": "user", "content": text}))
                    for text in ("ECHO_BAD_ARGS", "ECHO_UNKNOWN_TOOL", "ECHO_NO_CALL")]
        finally:
            await client.aclose()

    bad, unknown, no_call = asyncio.run(hooks())
    assert bad.tool_calls is not None
    with pytest.raises(ValueError, match="not JSON"):
        call_arguments(bad.tool_calls[0])
    assert unknown.tool_calls is not None
    assert unknown.tool_calls[0]["function"]["name"] == "echo_unknown_tool"
    assert no_call.tool_calls is None and no_call.text == "echo: ECHO_NO_CALL"


def test_anthropic_sdk_tool_use_round_trip_against_the_echo_server(
    echo_server: Callable[..., tuple[str, Path]],
) -> None:
    url, log = echo_server()
    config = AnthropicConfig(model="claude-echo", base_url=url.removesuffix("/v1"))

    async def round_trip() -> tuple[Completion, Completion]:
        client = LLMClient.from_config(config)
        try:
            call = await client.generate(ask(SYSTEM, ADD_QUESTION, tool_choice="required"))
            assert call.tool_calls is not None
            turns = [ADD_QUESTION, assistant_turn(call.text, call.tool_calls),
                     tool_turn(call.tool_calls[0], "40")]
            return call, await client.generate(ask(*turns))
        finally:
            await client.aclose()

    call, answer = asyncio.run(round_trip())
    assert call.tool_calls == [{"id": "toolu_echo_0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "echo"}'}}]
    assert answer.text == "echo: toolu_echo_0 returned 40"
    first, second = sent_bodies(log)
    assert first["tool_choice"] == {"type": "any"} and first["system"] == SYSTEM["content"]
    assert first["tools"][1]["input_schema"] == ADD["function"]["parameters"]
    assert second["messages"][1]["content"] == [{"type": "tool_use", "id": "toolu_echo_0",
                                                "name": "get_weather", "input": {"city": "echo"}}]
    assert second["messages"][2]["content"][0]["type"] == "tool_result"


# -- llama-cpp-python's server with a function-calling chat format ------------------------------


@pytest.fixture(scope="module")
def function_calling_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("llama-tools") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1",
               "--chat_format", "chatml-function-calling"]
    with running(command, port, log, timeout=120):
        yield f"http://127.0.0.1:{port}/v1"


def _served(url: str, request: Request) -> Completion:
    async def once() -> Completion:
        client = LLMClient.from_config(OpenAIConfig(model="smollm2", base_url=url, max_retries=0))
        try:
            return await client.generate(request)
        finally:
            await client.aclose()

    return asyncio.run(once())


def test_llama_cpp_server_calls_a_named_tool(function_calling_server: str) -> None:
    # That chat format writes the call after "functions.<name>:" under a grammar made from the
    # tool's parameters, so the arguments fit them whatever the model.
    done = _served(function_calling_server, ask(
        SYSTEM, {"role": "user", "content": "What is the weather in Paris?"},
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert done.tool_calls is not None and len(done.tool_calls) == 1
    call = done.tool_calls[0]
    assert call["function"]["name"] == "get_weather" and call["id"]
    jsonschema.validate(call_arguments(call), WEATHER["function"]["parameters"])


def test_llama_cpp_server_calls_a_tool_of_its_own_choice_under_auto(
    function_calling_server: str,
) -> None:
    # Under "auto" the format first picks, greedily, between "message:" and a function; this
    # question makes the embedded model pick add (probed; the tools go in the system turn, so
    # one is needed).
    done = _served(function_calling_server, ask(SYSTEM, ADD_QUESTION))
    assert done.tool_calls is not None and done.text == ""
    assert [call["function"]["name"] for call in done.tool_calls] == ["add"]
    assert call_arguments(done.tool_calls[0]) == {"a": 17, "b": 23}


# -- the embedded model in process, through the client's emulation ------------------------------


@pytest.fixture(scope="module")
def embedded() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(n_ctx=2048, n_threads=1)
    yield backend
    asyncio.run(backend.aclose())


def test_embedded_required_gives_a_call_whose_arguments_fit_the_schema(
    embedded: LlamaCppBackend,
) -> None:
    for question in ("Add 17 and 23.", "What is the weather in Paris?"):
        done = asyncio.run(LLMClient(embedded).generate(
            ask({"role": "user", "content": question}, tool_choice="required")))
        assert done.text == "" and done.tool_calls is not None and len(done.tool_calls) == 1
        call = done.tool_calls[0]
        parameters = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
        assert call["id"] == "call_0" and call["function"]["name"] in parameters
        jsonschema.validate(call_arguments(call), parameters[call["function"]["name"]])


def test_embedded_auto_parses_whatever_the_model_writes(embedded: LlamaCppBackend) -> None:
    request = ask(SYSTEM, ADD_QUESTION, seed=7)
    done = asyncio.run(LLMClient(embedded).generate(request))
    # What the backend writes for the emulated request, read by the one parser: the client
    # gave exactly that (calls or none), with the tools described in the system turn.
    raw = asyncio.run(embedded.generate(emulated_request(request)))
    assert (done.text, done.tool_calls) == parse_tool_calls(raw.text)
    assert done.text or done.tool_calls
