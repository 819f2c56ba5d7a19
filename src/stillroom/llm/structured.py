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
    found = False
    for candidate in _candidates(text):
        try:
            # strict=False: a raw newline or tab inside a string (llama.cpp's JSON grammar
            # lets one through) is the text the model meant, not a reason to fail the row.
            value = json.loads(candidate, strict=False)
        except ValueError:
            continue
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if not errors:
            return value
        if found:  # the first JSON found is the answer's whole; a later one is a piece of it
            continue
        found = True
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


class UnboundedSchema(ValueError):
    """A schema whose JSON has no longest form: a grammar built from it can run away."""


_NUMBER_CHARS = 40  # llama.cpp's grammar: at most 16 integral, 16 decimal and 3+ exponent digits


def json_length_bound(schema: dict[str, Any], where: str = "(root)") -> int:
    """The most characters a JSON value matching ``schema`` can take, counting one character per
    string character, plus one optional space after every token of structure (llama.cpp's
    grammar allows one there). Every token a model writes is at least one character, so with
    ``max_tokens`` at this bound a grammar-constrained answer always finishes, even one that
    degenerates into repetition ("1.1.1.1...") until each string is full. A string written with
    escapes (``\\u00e9``) or byte-level tokens can still need more: such an answer is cut off and
    fails its row with the reason, it never runs forever.

    Raises UnboundedSchema naming the first part without a bound: a string without
    ``maxLength``, an array without ``maxItems``, a number without ``minimum`` and ``maximum``,
    an object that allows properties it does not list.
    """
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        return max(len(json.dumps(value)) for value in values) + 1
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return max(
                json_length_bound(option, f"{where}/{key}/{index}")
                for index, option in enumerate(schema[key])
            )
    kind = schema.get("type")
    if kind == "string":
        if "maxLength" not in schema:
            raise UnboundedSchema(f"{where}: a string without maxLength")
        return int(schema["maxLength"]) + 3
    if kind in ("integer", "number"):
        if "minimum" not in schema or "maximum" not in schema:
            raise UnboundedSchema(f"{where}: a {kind} without minimum and maximum")
        if kind == "integer":
            return max(len(str(schema["minimum"])), len(str(schema["maximum"]))) + 1
        return _NUMBER_CHARS
    if kind == "boolean":
        return 6
    if kind == "null":
        return 5
    if kind == "array":
        if "maxItems" not in schema:
            raise UnboundedSchema(f"{where}: an array without maxItems")
        item = json_length_bound(schema.get("items", {}), f"{where}/items")
        return 2 + int(schema["maxItems"]) * (item + 2) + 1
    if kind == "object":
        if schema.get("additionalProperties", True) is not False:
            raise UnboundedSchema(f"{where}: an object without additionalProperties: false")
        total = 3
        for name, part in schema.get("properties", {}).items():
            total += len(json.dumps(name)) + 4 + json_length_bound(part, f"{where}/{name}")
        return total
    raise UnboundedSchema(f"{where}: no bound known for {schema!r}")
