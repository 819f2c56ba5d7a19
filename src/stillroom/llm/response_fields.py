"""Reading a server's JSON answer field by field: each read checks the field's type and a wrong
one becomes a non-retryable BackendError naming the field (``malformed``), for every backend
that parses JSON by hand (OpenAI-compatible chat, completions and scoring answers, Anthropic)."""

from __future__ import annotations

from typing import Any

from stillroom import secrets
from stillroom.llm.types import BackendError


def malformed(what: str) -> BackendError:
    """A response whose JSON has a field of the wrong type or value. Not retried: a server that
    sends such a body sends it again (a body that is not JSON at all, which a dropped connection
    can cause, is retried where it is read). Kept apart from a crash so the row's reason names
    the field instead of an AttributeError deep in a parser."""
    return BackendError(f"malformed response: {what}", kind="APIResponseValidationError")


def described(value: Any) -> str:
    """A JSON value's type for an error message: "null", "an int", "a list"."""
    if value is None:
        return "null"
    name = {"str": "string", "dict": "object", "bool": "boolean"}.get(
        type(value).__name__, type(value).__name__)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def token_count(container: dict[str, Any], name: str, where: str) -> int:
    """``container[name]`` as a token count: a non-negative integer, 0 when absent or null."""
    value = container.get(name)
    if value is None:
        return 0
    # bool is an int to Python, never a count to a server.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise malformed(f"{where}.{name} is {secrets.redact(repr(value))[:60]}, "
                        "not a count of tokens")
    return value


def reasoning_token_count(details: Any, name: str, completion_tokens: int) -> int:
    """The server's count of a trace's tokens, or 0 when it gave none that can be true: an
    integer from 0 to ``completion_tokens`` (the trace is part of the completion). Anything else
    (a string, a fraction, more than the whole completion) is ignored rather than failing an
    answer that is fine: the client then estimates the count, and says so."""
    value = details.get(name) if isinstance(details, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value if 0 <= value <= completion_tokens else 0


def object_field(value: Any, where: str) -> dict[str, Any]:
    """A response field that must be a JSON object, or {} when absent or null."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise malformed(f"{where} is {described(value)}, not an object")
    return value


def text_field(value: Any, where: str) -> str | None:
    """A response field that must be a string, or None when absent or null."""
    if value is not None and not isinstance(value, str):
        raise malformed(f"{where} is {described(value)}, not a string")
    return value
