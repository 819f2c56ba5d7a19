"""Structured (JSON-schema) output: a tolerant parser, a validator and the re-ask message.

Backends that can constrain decoding to a schema (OpenAI-compatible servers, llama.cpp) are asked
to; the answer is validated here either way, because "supports json_schema" ranges from a grammar
that guarantees it to a hint the model may ignore.
"""

from __future__ import annotations

import json
import re
from typing import Any

from stillroom.llm.types import Message

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_RAW_TEXT_LIMIT = 2000


class StructuredOutputError(ValueError):
    def __init__(self, problem: str, raw_text: str):
        self.problem = problem
        self.raw_text = raw_text
        shown = raw_text if len(raw_text) <= _RAW_TEXT_LIMIT else raw_text[:_RAW_TEXT_LIMIT] + "..."
        super().__init__(f"{problem}; raw answer: {shown!r}")


def _candidates(text: str) -> list[str]:
    """The whole text, fenced blocks, and the outermost {...} / [...] span, in that order."""
    stripped = text.strip()
    found = [stripped]
    found.extend(block.strip() for block in _FENCE.findall(text))
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = stripped.find(opener), stripped.rfind(closer)
        if 0 <= start < end:
            found.append(stripped[start : end + 1])
    return found


def parse_structured(text: str, schema: dict[str, Any]) -> Any:
    """Return the JSON value in ``text`` that satisfies ``schema``, or raise StructuredOutputError."""
    import jsonschema  # on first use: most runs never ask for JSON

    validator = jsonschema.Draft202012Validator(schema)
    problem = "no JSON value found"
    for candidate in _candidates(text):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if not errors:
            return value
        first = errors[0]
        where = "/".join(str(part) for part in first.path) or "(root)"
        problem = f"JSON does not match the schema at {where}: {first.message}"
    raise StructuredOutputError(problem, text)


def reask_messages(
    messages: list[Message], bad_answer: str, error: StructuredOutputError
) -> list[Message]:
    """The conversation so far plus the bad answer and a request to fix it."""
    return [
        *messages,
        {"role": "assistant", "content": bad_answer},
        {
            "role": "user",
            "content": (
                f"That answer could not be used: {error.problem}. "
                "Reply again with only the JSON value, matching the schema exactly."
            ),
        },
    ]
