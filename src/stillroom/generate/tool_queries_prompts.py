"""The prompt ``tool_queries`` sends, its answer schema, and a lenient reader for backends that
cannot constrain their answer to the schema."""

from __future__ import annotations

import json
import re
from typing import Any

from stillroom.data.rows import PromptTemplate

# In our own words. APIGen's generator is shown the functions and a few example queries and
# asked for varied queries answerable with them; the rules below are what makes a query usable
# for tool-calling data: every argument value is in the text, and it reads like a user, not an
# API description.
WRITE_QUERIES = PromptTemplate(
    "tool_queries.write",
    "You write requests that users send to an AI assistant. The assistant can call these "
    "functions (their JSON definitions, one per line):\n\n{tools}\n\n"
    "Write {n} different requests that the assistant can only answer well by calling one or "
    "more of these functions. Each request must:\n"
    "- contain every value the calls need (numbers, names, units, dates) in its own words;\n"
    "- read like something a real person types: vary the purpose, wording and length;\n"
    "- not name the functions, and not mention functions, tools or APIs at all.\n"
    "{topic}{examples}"
    '\nReply with only a JSON object of this form: {{"queries": ["<request 1>", ...]}}, '
    "holding exactly {n} requests.",
)

SYSTEM = "You write realistic, self-contained user requests for testing an AI assistant."


def tools_listing(tools: list[dict[str, Any]]) -> str:
    """Each tool's function definition as one line of JSON."""
    return "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)


def write_prompt(tools: list[dict[str, Any]], n: int, topic: str | None,
                 examples: list[str]) -> str:
    topic_text = f"\nThe requests are about: {topic.strip()}\n" if topic and topic.strip() else ""
    examples_text = ""
    if examples:
        listed = "\n".join(f"- {example.strip()}" for example in examples)
        examples_text = (f"\nExamples of requests of the right kind (write new ones, do not "
                         f"copy them):\n{listed}\n")
    return WRITE_QUERIES.format(tools=tools_listing(tools), n=n, topic=topic_text,
                                examples=examples_text)


def queries_schema(n: int, query_chars: int) -> dict[str, Any]:
    """Exactly ``n`` non-empty texts, each bounded (so a grammar-constrained answer ends)."""
    return {
        "type": "object",
        "properties": {
            "queries": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": query_chars},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": ["queries"],
        "additionalProperties": False,
    }


_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+(.*\S)\s*$")


def read_listed_queries(text: str) -> dict[str, Any] | None:
    """A numbered or bulleted list in plain text, as the schema's object (None: no list)."""
    found = [match.group(1).strip().strip('"') for line in text.splitlines()
             if (match := _ITEM.match(line))]
    return {"queries": found} if found else None
