"""The Anthropic backend's request mapping, response parsing and error mapping, without a server.

The end-to-end path against a real server speaking the Messages API is in
tests/integration/test_anthropic_katan.py.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import pytest

from stillroom.errors import ConfigError
from stillroom.llm import AnthropicBackend, AnthropicConfig, LLMClient, backends
from stillroom.llm.anthropic_backend import map_error, messages_body, parse_message
from stillroom.llm.types import BackendError, GenerationParams, Request

URL = "https://api.anthropic.com/v1/messages"


def chat(*messages: tuple[str, Any], **params: Any) -> Request:
    return Request(
        messages=[{"role": role, "content": content} for role, content in messages],
        params=GenerationParams(**params),
    )


def status_error(
    status: int, headers: dict[str, str] | None = None, message: str = "boom"
) -> Exception:
    body = {"type": "error", "error": {"type": "api_error", "message": message}}
    response = httpx2.Response(
        status, headers=headers or {}, json=body, request=httpx2.Request("POST", URL)
    )
    return anthropic.APIStatusError(f"Error code: {status}", response=response, body=body)


# -- request mapping ------------------------------------------------------------------------------


def test_system_messages_go_to_the_system_parameter() -> None:
    request = chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"))
    body = messages_body("claude-x", request, 1024)
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert body["model"] == "claude-x"


def test_several_system_messages_and_text_blocks_are_joined() -> None:
    request = chat(
        ("system", "One."),
        ("system", [{"type": "text", "text": "Two"}, {"type": "text", "text": "."}]),
        ("user", "Hi"),
    )
    assert messages_body("m", request, 1024)["system"] == "One.\n\nTwo."


def test_no_system_parameter_without_a_system_message() -> None:
    assert "system" not in messages_body("m", chat(("user", "Hi")), 1024)


def test_sampling_parameters_are_mapped_and_seed_is_not_sent() -> None:
    request = chat(
        ("user", "Hi"), temperature=0.3, top_p=0.9, max_tokens=55, stop=("END", "\n\n"), seed=7
    )
    body = messages_body("m", request, 1024)
    # SDK 2.x has no temperature/top_p keywords; extra_body puts them in the JSON body as before.
    assert body["extra_body"] == {"temperature": 0.3, "top_p": 0.9}
    assert body["max_tokens"] == 55
    assert body["stop_sequences"] == ["END", "\n\n"]
    assert "seed" not in body and "stop" not in body and "temperature" not in body


def test_max_tokens_default_applies_when_the_request_sets_none() -> None:
    body = messages_body("m", chat(("user", "Hi")), 321)
    assert body["max_tokens"] == 321
    assert set(body) == {"model", "messages", "max_tokens"}  # nothing unset is sent


def test_json_schema_is_not_sent_the_client_validates_instead() -> None:
    request = chat(("user", "Hi"), json_schema={"type": "object"})
    body = messages_body("m", request, 1024)
    assert set(body) == {"model", "messages", "max_tokens"}
    assert AnthropicBackend.supports_json_schema is False


def test_raw_prompts_and_logprobs_are_refused_without_retry() -> None:
    with pytest.raises(BackendError) as raw:
        messages_body("m", Request(prompt="Once upon a time"), 1024)
    assert raw.value.kind == "BadRequestError" and not raw.value.retryable
    assert "raw prompt" in raw.value.message
    with pytest.raises(BackendError) as logprobs:
        messages_body("m", chat(("user", "Hi"), top_logprobs=3), 1024)
    assert not logprobs.value.retryable and "logprobs" in logprobs.value.message
    assert AnthropicBackend.supports_logprobs is False
    assert AnthropicBackend.supports_raw_prompt is False


# -- response parsing -----------------------------------------------------------------------------


def message(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-served",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }
    data.update(overrides)
    return data


def test_text_blocks_are_concatenated_and_usage_read() -> None:
    completion = parse_message(message(), "claude-asked")
    assert completion.text == "Hello world"
    assert completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens) == (12, 5)
    assert completion.model == "claude-served"
    assert completion.logprobs is None


def test_non_text_blocks_are_skipped() -> None:
    content = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}},
    ]
    assert parse_message(message(content=content), "m").text == "Let me check."


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"content": "Hello"}, "content is a string"),
        ({"content": [None]}, "content[0] is null"),
        ({"content": ["Hello"]}, "content[0] is a string"),
        ({"content": [{"type": "text", "text": None}]}, "content[0].text of a text block is null"),
        ({"content": [{"type": "text"}]}, "content[0].text of a text block is null"),
        ({"content": [{"type": "thinking", "thinking": {"a": 1}}, {"type": "text", "text": "x"}]},
         "content[0].thinking of a thinking block is an object"),
        ({"content": [{"type": "thinking", "thinking": None}]},
         "content[0].thinking of a thinking block is null"),
        ({"usage": [5]}, "usage is a list"),
        ({"usage": {"input_tokens": "12", "output_tokens": 5}}, "usage.input_tokens"),
        ({"usage": {"input_tokens": 12, "output_tokens": -5}}, "usage.output_tokens"),
        ({"stop_reason": 3}, "stop_reason is an int"),
    ],
)
def test_fields_of_the_wrong_type_are_a_response_validation_error(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(BackendError) as error:
        parse_message(message(**overrides), "m")
    assert error.value.kind == "APIResponseValidationError" and not error.value.retryable
    assert field in str(error.value)


@pytest.mark.parametrize("count", ["many", -1, 1.5, 6, True])
def test_a_thinking_count_that_cannot_be_true_is_ignored(count: Any) -> None:
    content = [{"type": "thinking", "thinking": "t"}, {"type": "text", "text": "a"}]
    usage = {"input_tokens": 1, "output_tokens": 5, "output_tokens_details": {"thinking_tokens": count}}
    assert parse_message(message(content=content, usage=usage), "m").reasoning_tokens == 0
    usage["output_tokens_details"] = {"thinking_tokens": 4}
    assert parse_message(message(content=content, usage=usage), "m").reasoning_tokens == 4


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_use"),
    ],
)
def test_stop_reasons_read_as_openai_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    assert parse_message(message(stop_reason=stop_reason), "m").finish_reason == finish_reason


def test_prompt_cache_tokens_count_as_prompt_tokens() -> None:
    usage = {
        "input_tokens": 3,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens": 4,
    }
    assert parse_message(message(usage=usage), "m").prompt_tokens == 123


def test_an_sdk_message_object_is_read_too() -> None:
    sdk_message = anthropic.types.Message.model_validate(message())
    assert parse_message(sdk_message, "m").text == "Hello world"


# -- error mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable", "slow_down"),
    [
        (400, "BadRequestError", False, False),
        (401, "AuthenticationError", False, False),
        (403, "PermissionDeniedError", False, False),
        (404, "NotFoundError", False, False),
        (408, "APITimeoutError", True, False),
        (409, "ConflictError", True, False),
        (413, "APIStatusError", False, False),
        (429, "RateLimitError", True, True),
        (500, "InternalServerError", True, False),
        (503, "InternalServerError", True, True),
        (529, "OverloadedError", True, True),
    ],
)
def test_status_errors_mean_what_error_for_status_says(
    status: int, kind: str, retryable: bool, slow_down: bool
) -> None:
    error = map_error(status_error(status, message="the reason"))
    assert (error.kind, error.status, error.retryable, error.slow_down) == (
        kind,
        status,
        retryable,
        slow_down,
    )
    assert error.message == "the reason"  # the API's message, not the SDK's "Error code: ..." form


def test_retry_after_is_honoured() -> None:
    assert map_error(status_error(429, {"retry-after": "7"})).retry_after == 7.0
    assert map_error(status_error(529, {"retry-after-ms": "1500"})).retry_after == 1.5


def test_x_should_retry_overrides_the_status() -> None:
    assert map_error(status_error(500, {"x-should-retry": "false"})).retryable is False
    assert map_error(status_error(400, {"x-should-retry": "true"})).retryable is True


def test_timeouts_and_connection_errors_are_retried() -> None:
    request = httpx2.Request("POST", URL)
    timeout = map_error(anthropic.APITimeoutError(request=request))
    assert (timeout.kind, timeout.retryable) == ("APITimeoutError", True)
    connection = map_error(anthropic.APIConnectionError(request=request))
    assert (connection.kind, connection.retryable) == ("APIConnectionError", True)


# -- config ---------------------------------------------------------------------------------------


def test_registered_under_its_kind() -> None:
    assert backends.get("anthropic") is AnthropicConfig
    assert AnthropicConfig(model="m").backend_class() is AnthropicBackend


def test_remote_base_url_without_key_fails_at_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_ANTHROPIC_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_ANTHROPIC_KEY"):
        AnthropicConfig(model="m", api_key_env="MY_ANTHROPIC_KEY").build()
    with pytest.raises(ConfigError, match="MY_ANTHROPIC_KEY"):
        AnthropicConfig(
            model="m", base_url="https://proxy.example.com", api_key_env="MY_ANTHROPIC_KEY"
        ).build()


def test_local_base_url_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    backend = AnthropicConfig(model="m", base_url="http://127.0.0.1:9/").build()
    assert isinstance(backend, AnthropicBackend)
    assert backend.base_url == "http://127.0.0.1:9"


def test_identity_leaves_out_where_and_how_the_key_is_found() -> None:
    one = AnthropicConfig(model="m", base_url="http://localhost:1", api_key_env="A", concurrency=3)
    two = AnthropicConfig(model="m", base_url="http://localhost:2", api_key_env="B")
    assert (
        one.identity()
        == two.identity()
        == {
            "kind": "anthropic",
            "model": "m",
            "max_tokens_default": 1024,
        }
    )
    assert AnthropicConfig(model="m", max_tokens_default=9).identity() != one.identity()


# -- the SDK client, replaced by a fake ----------------------------------------------------------


class FakeMessages:
    def __init__(self, outcomes: list[Any]):
        self.outcomes = outcomes
        self.calls: list[dict[str, Any]] = []

    async def create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return anthropic.types.Message.model_validate(outcome)


class FakeClient:
    """Stands in for anthropic.AsyncAnthropic; each instance answers with ``outcomes`` in turn."""

    made: list[FakeClient] = []
    outcomes: list[Any] = []

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        self.messages = FakeMessages(list(FakeClient.outcomes))
        self.closed = False
        FakeClient.made.append(self)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_sdk(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    FakeClient.made = []
    FakeClient.outcomes = []
    monkeypatch.setattr(anthropic, "AsyncAnthropic", FakeClient)
    return FakeClient


async def test_sdk_client_has_retries_and_timeouts_off(
    fake_sdk: type[FakeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-123")
    fake_sdk.outcomes = [message()]
    backend = AnthropicConfig(model="claude-x").build()
    completion = await backend.generate(chat(("system", "S"), ("user", "Hi"), max_tokens=9))
    assert completion.text == "Hello world"
    (client,) = fake_sdk.made
    assert client.kwargs == {
        "api_key": "sk-secret-123",
        "base_url": "https://api.anthropic.com",
        "max_retries": 0,
        "timeout": None,
    }
    assert client.messages.calls == [
        {
            "model": "claude-x",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 9,
            "system": "S",
        }
    ]
    # The key lives in the SDK client only: not in what is cached or written.
    assert "sk-secret-123" not in repr(backend.cache_identity())
    assert "sk-secret-123" not in repr(completion.to_record())
    await backend.aclose()
    assert client.closed


async def test_local_server_without_key_gets_a_placeholder(
    fake_sdk: type[FakeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    fake_sdk.outcomes = [message()]
    backend = AnthropicConfig(model="m", base_url="http://localhost:8080").build()
    await backend.generate(chat(("user", "Hi")))
    kwargs = fake_sdk.made[0].kwargs
    assert kwargs["api_key"]  # something, so the SDK sends the request
    # Other servers get the key in the x-api-key header too (SDK 2.x sends only a Bearer one).
    assert kwargs["default_headers"] == {"x-api-key": kwargs["api_key"]}


async def test_overloaded_then_ok_is_retried_by_the_client(fake_sdk: type[FakeClient]) -> None:
    fake_sdk.outcomes = [status_error(529), status_error(500), message()]
    backend = AnthropicConfig(model="m", base_url="http://localhost:8080").build()
    client = LLMClient(backend, retry_base_delay=0.0)
    completion = await client.generate(chat(("user", "Hi")))
    assert completion.text == "Hello world"
    assert client.stats.retries == 2
    assert client.stats.errors == {"OverloadedError": 1, "InternalServerError": 1}
    await client.aclose()


async def test_a_key_the_server_echoes_is_masked_in_the_error(
    fake_sdk: type[FakeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A variable whose name says nothing: masked because the backend registered what it read.
    key = "k3Yq8vTn2LmP0rWs9XaB4cDe"
    monkeypatch.setenv("TEACHER_CRED_VALUE", key)
    fake_sdk.outcomes = [
        status_error(401, message=f"invalid x-api-key {key} ({key[:9]}...{key[-8:]})")
    ]
    backend = AnthropicConfig(
        model="m", base_url="http://localhost:8080", api_key_env="TEACHER_CRED_VALUE"
    ).build()
    with pytest.raises(BackendError) as caught:
        await backend.generate(chat(("user", "Hi")))
    assert fake_sdk.made[0].kwargs["api_key"] == key  # the SDK still gets the key itself
    text = str(caught.value)
    assert caught.value.kind == "AuthenticationError" and "invalid x-api-key ***" in text
    assert not any(key[i : i + 8] in text for i in range(len(key) - 7))
    # Not chained to the SDK's exception, whose text holds the body unredacted.
    assert caught.value.__cause__ is None
    await backend.aclose()


def test_credentials_in_base_url_are_refused_naming_the_key_variable() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        AnthropicConfig(model="m", base_url="https://me:k3Yq8vTn2LmP0rWs@proxy.example.com",
                        api_key_env="MY_ANTHROPIC_KEY")
    assert "k3Yq8vTn" not in str(caught.value)
    assert caught.value.errors()[0]["loc"] == ("base_url",)
    assert "MY_ANTHROPIC_KEY" in caught.value.errors()[0]["msg"]
