from __future__ import annotations

import email.utils
import time

import pytest

from stillroom.llm.types import GenerationParams, Request, error_for_status, parse_retry_after


@pytest.mark.parametrize(
    ("status", "kind", "retryable", "slow_down"),
    [
        (400, "BadRequestError", False, False),
        (401, "AuthenticationError", False, False),
        (404, "NotFoundError", False, False),
        (408, "APITimeoutError", True, False),
        (409, "ConflictError", True, False),
        (429, "RateLimitError", True, True),
        (500, "InternalServerError", True, False),
        (503, "InternalServerError", True, True),
        (504, "InternalServerError", True, False),
    ],
)
def test_statuses_mean_what_they_mean_in_the_openai_sdk(status: int, kind: str, retryable: bool, slow_down: bool) -> None:
    error = error_for_status(status, "x", {})
    assert (error.kind, error.retryable, error.slow_down) == (kind, retryable, slow_down)


def test_x_should_retry_overrides_the_status() -> None:
    assert not error_for_status(500, "x", {"x-should-retry": "false"}).retryable
    assert error_for_status(400, "x", {"x-should-retry": "true"}).retryable


def test_retry_after_in_seconds_milliseconds_and_http_dates() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after({"retry-after": date}) or 0) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_a_request_is_either_chat_or_raw() -> None:
    with pytest.raises(ValueError):
        Request()
    with pytest.raises(ValueError):
        Request(messages=[], prompt="x")
    assert Request(prompt="x", params=GenerationParams(seed=5), sample=2).effective_seed() == 7


def test_penalties_reach_the_openai_body_only_when_set() -> None:
    from stillroom.llm.openai_compat import chat_body

    plain = chat_body("m", Request(messages=[{"role": "user", "content": "hi"}]))
    assert "presence_penalty" not in plain and "frequency_penalty" not in plain
    body = chat_body("m", Request(messages=[{"role": "user", "content": "hi"}],
                                  params=GenerationParams(presence_penalty=2.0, frequency_penalty=1.5)))
    assert body["presence_penalty"] == 2.0 and body["frequency_penalty"] == 1.5


def test_null_padded_turns_read_back_from_arrow_are_sent_and_keyed_as_written() -> None:
    """Arrow pads every turn with the keys of the others (a user turn gets `tool_calls: None`);
    servers that validate OpenAI's message types refuse those, and the cache key must be the
    same as for the conversation before it was written."""
    from stillroom.llm.cache import request_key

    written = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0"}]}]
    read_back = [{"role": "user", "content": "hi", "tool_calls": None, "name": None},
                 {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0"}],
                  "name": None}]
    request = Request(messages=read_back)
    assert request.messages == written
    assert request_key({"m": 1}, request) == request_key({"m": 1}, Request(messages=written))
    assert Request(messages=[{"role": "assistant", "content": None}]).messages == [
        {"role": "assistant", "content": None}]
